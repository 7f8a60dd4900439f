"""Checkpoint loading rules: layouts, prefixes, heads, and errors that list the offending keys."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from longformer.errors import CheckpointFileError
from longformer.encoder import (LongformerConfig, LongformerForMaskedLM, LongformerForMultipleChoice,
                                LongformerForQuestionAnswering, LongformerForSequenceClassification,
                                LongformerForTokenClassification, LongformerModel)

from encoder_helpers import awkward_batch

ALL = [LongformerModel, LongformerForMaskedLM, LongformerForSequenceClassification, LongformerForQuestionAnswering,
       LongformerForTokenClassification, LongformerForMultipleChoice]


def tiny_config(**kw) -> LongformerConfig:
    args = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=40, attention_window=[2, 3], type_vocab_size=2,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args.update(kw)
    return LongformerConfig(**args)


def randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("cls", ALL)
def test_save_load_round_trip(tmp_path, cls):
    torch.manual_seed(0)
    model = randomised(cls(tiny_config(attention_dilation=[1, [1, 2, 1, 3]])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dilation: transformers would compute something else
        model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert not loaded.training
    assert_same_weights(model, loaded)
    if cls is LongformerForMaskedLM:  # still tied after loading
        assert loaded.lm_head.decoder.weight is loaded.longformer.embeddings.word_embeddings.weight


def test_pytorch_model_bin_and_roberta_prefix_and_gamma_beta(tmp_path):
    torch.manual_seed(0)
    model = randomised(LongformerForMaskedLM(tiny_config()))
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    old = {}
    for k, v in sd.items():  # the layout of early allenai checkpoints
        k = k.replace("longformer.", "roberta.").replace("LayerNorm.weight", "LayerNorm.gamma")
        old[k.replace("LayerNorm.bias", "LayerNorm.beta")] = v
    old["roberta.embeddings.position_ids"] = torch.arange(40)[None]
    old["lm_head.decoder.weight"] = sd["longformer.embeddings.word_embeddings.weight"]
    (tmp_path / "model.safetensors").unlink()
    torch.save(old, tmp_path / "pytorch_model.bin")
    assert_same_weights(model, LongformerForMaskedLM.from_pretrained(tmp_path))


def test_bare_checkpoint_into_task_model_and_back(tmp_path):
    torch.manual_seed(0)
    base = randomised(LongformerModel(tiny_config()))
    base.save_pretrained(tmp_path / "base")
    with pytest.warns(UserWarning) as record:
        clf = LongformerForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=5)
    text = " ".join(str(w.message) for w in record)
    assert "newly initialised" in text and "classifier.out_proj.weight" in text
    assert "longformer.pooler.dense.weight" in text  # pooler weights not used, and said so
    assert clf.classifier.out_proj.weight.shape == (5, 32)
    for k, v in base.state_dict().items():
        if not k.startswith("pooler."):
            torch.testing.assert_close(clf.state_dict()["longformer." + k], v, rtol=0, atol=0)
    clf.save_pretrained(tmp_path / "clf")
    bare = LongformerModel.from_pretrained(tmp_path / "clf")  # task checkpoint into the bare model
    assert bare.pooler is None  # not in the checkpoint: not built (never random)
    ids, mask, glob = awkward_batch(11)
    with torch.no_grad():
        torch.testing.assert_close(bare(ids, mask, glob).last_hidden_state,
                                   clf.longformer(ids, mask, glob).last_hidden_state)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    torch.manual_seed(0)
    randomised(LongformerModel(tiny_config())).save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["encoder.layer.1.attention.self.key_global.weight"]
    del sd["encoder.layer.0.output.dense.bias"]
    sd["encoder.layer.2.attention.self.query.weight"] = torch.zeros(32, 32)
    sd["embeddings.position_embeddings.weight"] = torch.zeros(50, 32)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        LongformerModel.from_pretrained(tmp_path)
    msg = str(err.value)
    for key in ("encoder.layer.1.attention.self.key_global.weight", "encoder.layer.0.output.dense.bias",
                "encoder.layer.2.attention.self.query.weight", "embeddings.position_embeddings.weight",
                "(50, 32)", "(40, 32)", "longformer convert"):
        assert key in msg, key


def test_misshaped_head_is_an_error(tmp_path):
    randomised(LongformerForSequenceClassification(tiny_config(num_labels=3))).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="classifier.out_proj.weight"):
        LongformerForSequenceClassification.from_pretrained(tmp_path, num_labels=4)


def test_unsupported_model_type_and_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        LongformerModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match="longformer convert"):
        LongformerModel.from_pretrained(tmp_path)
    LongformerConfig(**{**tiny_config().__dict__}).to_json(tmp_path)
    with pytest.raises(CheckpointFileError, match="model.safetensors"):
        LongformerModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointFileError, match="is not a directory"):
        LongformerModel.from_pretrained(tmp_path / "nope")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = LongformerModel(tiny_config())
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
