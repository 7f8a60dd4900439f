"""Outputs equal transformers' Longformer for the same weights, both directions (fp32, <= 1e-4)."""
from __future__ import annotations

import pytest
import torch

from longformer.encoder import (LongformerForMaskedLM, LongformerForQuestionAnswering,
                                LongformerForSequenceClassification, LongformerModel)

from encoder_helpers import SEP, awkward_batch, hf_config, make_hf

pytest.importorskip("transformers")
TOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("windows,T,impl", [
    ((4, 8, 4), 23, "auto"),
    ((4, 8, 4), 23, "reference"),
    ((4, 12), 29, "auto"),
    ((8,), 5, "auto"),
    ((4, 8, 4), 83, "auto"),  # T > 64: the blocked kernel
    ((4, 8, 4), 83, "blocked"),
])
def test_model_matches_transformers(tmp_path, windows, T, impl):
    hf = make_hf("LongformerModel", hf_config(windows, max_position_embeddings=90))
    hf.save_pretrained(tmp_path)
    ours = LongformerModel.from_pretrained(tmp_path, impl=impl)
    assert ours.config.attention_window == [w // 2 for w in windows]
    ids, mask, glob = awkward_batch(T)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, global_attention_mask=glob, output_hidden_states=True)
        got = ours(ids, attention_mask=mask, global_attention_mask=glob, output_hidden_states=True)
    assert max_diff(got.last_hidden_state, want.last_hidden_state) <= TOL
    assert max_diff(got.pooler_output, want.pooler_output) <= TOL
    assert len(got.hidden_states) == len(want.hidden_states) == len(windows) + 1
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert max_diff(a, b) <= TOL


def test_no_global_and_no_mask_match(tmp_path):
    hf = make_hf("LongformerModel", hf_config((4, 8, 4)))
    hf.save_pretrained(tmp_path)
    ours = LongformerModel.from_pretrained(tmp_path)
    ids, _, _ = awkward_batch(19)
    with torch.no_grad():
        assert max_diff(ours(ids).last_hidden_state, hf(ids).last_hidden_state) <= TOL


@pytest.mark.parametrize("name,cls", [
    ("LongformerForMaskedLM", LongformerForMaskedLM),
    ("LongformerForSequenceClassification", LongformerForSequenceClassification),
])
def test_task_models_match_transformers(tmp_path, name, cls):
    hf = make_hf(name, hf_config((4, 8, 4), num_labels=3))
    hf.save_pretrained(tmp_path)
    ours = cls.from_pretrained(tmp_path)
    ids, mask, glob = awkward_batch(21)
    with torch.no_grad():
        for g in (glob, None):  # None: the class's default global attention
            want = hf(ids, attention_mask=mask, global_attention_mask=g).logits
            got = ours(ids, attention_mask=mask, global_attention_mask=g).logits
            assert max_diff(got, want) <= TOL


def test_question_answering_matches_transformers(tmp_path):
    hf = make_hf("LongformerForQuestionAnswering", hf_config((4, 8, 4)))
    hf.save_pretrained(tmp_path)
    ours = LongformerForQuestionAnswering.from_pretrained(tmp_path)
    ids, mask, _ = awkward_batch(22)
    # <s> question </s></s> context </s>: transformers needs exactly three separators per row.
    for b, (q_end, end) in enumerate([(5, 21), (3, 16), (7, 12)]):
        ids[b, 0] = 0
        ids[b, [q_end, q_end + 1, end]] = SEP
    starts, ends = torch.tensor([8, 5, 9]), torch.tensor([10, 9, 30])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
        got = ours(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    assert max_diff(got.start_logits, want.start_logits) <= TOL
    assert max_diff(got.end_logits, want.end_logits) <= TOL
    assert abs(got.loss.item() - want.loss.item()) <= TOL


@pytest.mark.parametrize("name,cls", [
    ("LongformerModel", LongformerModel),
    ("LongformerForMaskedLM", LongformerForMaskedLM),
    ("LongformerForSequenceClassification", LongformerForSequenceClassification),
    ("LongformerForQuestionAnswering", LongformerForQuestionAnswering),
])
def test_save_pretrained_loads_in_transformers(tmp_path, name, cls):
    import transformers
    from longformer.encoder import LongformerConfig

    config = LongformerConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=48, max_position_embeddings=66, attention_window=[2, 4],
                              type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              num_labels=2 if name == "LongformerForQuestionAnswering" else 3)
    torch.manual_seed(1)
    ours = cls(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.2)
    ours.save_pretrained(tmp_path)
    hf = getattr(transformers, name).from_pretrained(tmp_path).eval()
    assert hf.config.attention_window == [4, 8]
    ids, mask, glob = awkward_batch(27)
    if name == "LongformerForQuestionAnswering":
        ids[:, [4, 5, 20]] = SEP
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, global_attention_mask=glob)
        got = ours(ids, attention_mask=mask, global_attention_mask=glob)
    for field in ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits"):
        if hasattr(got, field):
            assert max_diff(getattr(got, field), getattr(want, field)) <= TOL, field


def test_untied_lm_head_both_directions(tmp_path):
    """tie_word_embeddings=False: transformers unties decoder weight AND bias (lm_head.bias goes unused)."""
    import transformers

    hf = make_hf("LongformerForMaskedLM", hf_config((4, 8), tie_word_embeddings=False))
    hf.save_pretrained(tmp_path / "hf")
    ours = LongformerForMaskedLM.from_pretrained(tmp_path / "hf")
    assert ours.lm_head.decoder.weight is not ours.longformer.embeddings.word_embeddings.weight
    ids, mask, glob = awkward_batch(19)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, global_attention_mask=glob).logits
        assert max_diff(ours(ids, attention_mask=mask, global_attention_mask=glob).logits, want) <= TOL
        ours.save_pretrained(tmp_path / "ours")
        back = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "ours").eval()
        assert max_diff(back(ids, attention_mask=mask, global_attention_mask=glob).logits, want) <= TOL


def test_pytorch_model_bin_of_a_transformers_state_dict(tmp_path):
    """The allenai/longformer-base-4096 layout: config.json + pytorch_model.bin of the full state dict
    (tied names included), MLM labels with -100."""
    hf = make_hf("LongformerForMaskedLM", hf_config((4, 8)))
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = LongformerForMaskedLM.from_pretrained(tmp_path)
    ids, mask, glob = awkward_batch(17)
    labels = ids.clone()
    labels[:, ::2] = -100
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
        got = ours(ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
    assert max_diff(got.logits, want.logits) <= TOL
    assert abs(got.loss.item() - want.loss.item()) <= TOL


@pytest.mark.parametrize("name", ["LongformerForTokenClassification", "LongformerForMultipleChoice"])
def test_token_classification_and_multiple_choice_match_transformers(tmp_path, name):
    import longformer.encoder as ours_module

    hf = make_hf(name, hf_config((4, 8), num_labels=5))
    hf.save_pretrained(tmp_path)
    ours = getattr(ours_module, name).from_pretrained(tmp_path)
    ids, mask, glob = (t[:2] for t in awkward_batch(18))
    if name == "LongformerForMultipleChoice":  # (B, choices, T), three separators per choice
        ids = torch.stack([ids, ids.flip(1)], dim=1)
        ids[..., [4, 5, 17]] = SEP
        mask, glob = torch.ones_like(ids), None  # default global attention: the choice tokens
        labels = torch.tensor([1, 0])
    else:
        labels = torch.randint(0, 5, ids.shape)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
        got = ours(ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
    assert max_diff(got.logits, want.logits) <= TOL
    assert abs(got.loss.item() - want.loss.item()) <= TOL


def test_sharded_safetensors_checkpoint(tmp_path):
    hf = make_hf("LongformerModel", hf_config((4, 8)))
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = LongformerModel.from_pretrained(tmp_path)
    ids, mask, glob = awkward_batch(15)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        assert max_diff(ours(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state, want) <= TOL
