"""Seeded random transformers Longformer configs and inputs, loaded, compared, saved back (slow)."""
from __future__ import annotations

import random

import pytest
import torch

from longformer.encoder import LongformerForMaskedLM, LongformerModel

from encoder_helpers import make_hf

pytest.importorskip("transformers")


def random_case(seed: int):
    from transformers import LongformerConfig as HFConfig

    rng = random.Random(seed)
    heads = rng.choice([1, 2, 3, 4])
    layers = rng.choice([1, 2, 3])
    # two-sided; multiples of one base so transformers can pad once (its 2 = w 1 crashes in transformers)
    base = rng.choice([4, 6, 8])
    windows = [base * rng.choice([1, 2]) for _ in range(layers)]
    if rng.random() < 0.3:
        windows = base  # an int, broadcast
    pad = rng.choice([0, 1, 3])
    config = HFConfig(vocab_size=rng.choice([37, 64]), hidden_size=heads * rng.choice([4, 8]), num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=rng.choice([16, 40]),
                      hidden_act=rng.choice(["gelu", "gelu_new", "relu", "silu"]), hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, max_position_embeddings=80, attention_window=windows,
                      type_vocab_size=rng.choice([1, 2]), layer_norm_eps=rng.choice([1e-5, 1e-12]),
                      pad_token_id=pad, bos_token_id=None, eos_token_id=None, sep_token_id=None,
                      tie_word_embeddings=rng.random() < 0.5)
    B, T = rng.choice([1, 2, 3]), rng.randint(1, 60)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).long()
    mask[:, 0] = 1
    ids[mask == 0] = pad
    glob = (torch.rand(B, T, generator=g) < rng.choice([0.0, 0.05, 0.3])).long()
    types = torch.randint(0, config.type_vocab_size, (B, T), generator=g)
    return config, ids, mask, glob, types


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(24))
def test_random_configs_both_directions(tmp_path, seed):
    import transformers

    config, ids, mask, glob, types = random_case(seed)
    name, cls = ("LongformerForMaskedLM", LongformerForMaskedLM) if seed % 2 else ("LongformerModel", LongformerModel)
    hf = make_hf(name, config, seed=seed)
    hf.save_pretrained(tmp_path / "hf")
    ours = cls.from_pretrained(tmp_path / "hf")
    field = "logits" if seed % 2 else "last_hidden_state"
    with torch.no_grad():
        want = getattr(hf(ids, attention_mask=mask, global_attention_mask=glob, token_type_ids=types), field)
        got = getattr(ours(ids, attention_mask=mask, global_attention_mask=glob, token_type_ids=types), field)
        assert (got - want).abs().max().item() <= 1e-4
        ours.save_pretrained(tmp_path / "ours")
        back = getattr(transformers, name).from_pretrained(tmp_path / "ours").eval()
        again = getattr(back(ids, attention_mask=mask, global_attention_mask=glob, token_type_ids=types), field)
        assert (again - want).abs().max().item() <= 1e-4
