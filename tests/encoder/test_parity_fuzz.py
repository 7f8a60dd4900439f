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


@pytest.mark.slow
def test_thousand_tokens_both_directions(tmp_path):
    """4 layers x 64, windows 32..128 (one-sided), T=1000, padding and global tokens, blocked kernel."""
    import transformers

    config = transformers.LongformerConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=1100, attention_window=[64, 128, 128, 256], hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, type_vocab_size=1)
    hf = make_hf("LongformerModel", config, seed=5)
    hf.save_pretrained(tmp_path / "hf")
    ours = LongformerModel.from_pretrained(tmp_path / "hf")
    T = 1000
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 500, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, 777:] = 0
    ids[mask == 0] = 1
    glob = torch.zeros(2, T, dtype=torch.long)
    glob[0, [0, 400, 999]] = 1
    glob[1, [0, 5, 6, 7]] = 1
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        got = ours(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        print(f"max |ours - transformers| = {(got - want).abs().max().item():.2e}")
        assert (got - want).abs().max().item() <= 1e-4
        ours.save_pretrained(tmp_path / "ours")
        back = transformers.LongformerModel.from_pretrained(tmp_path / "ours").eval()
        again = back(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        print(f"max |saved back - transformers| = {(again - want).abs().max().item():.2e}")
        assert (again - want).abs().max().item() <= 1e-4
