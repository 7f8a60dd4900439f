"""Tiny seeded transformers Longformer checkpoints and awkward inputs for the encoder tests.

(Named encoder_helpers, not helpers: test dirs share one import namespace.)
"""
from __future__ import annotations

import torch

VOCAB, PAD, SEP = 99, 1, 2


def hf_config(windows=(4, 8, 4), **kw):
    """transformers LongformerConfig (two-sided windows) of a tiny model; dropout off for comparisons."""
    from transformers import LongformerConfig as HFConfig

    args = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=len(windows), num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=66, attention_window=list(windows),
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2,
                pad_token_id=PAD, bos_token_id=0, eos_token_id=SEP, sep_token_id=SEP, layer_norm_eps=1e-5)
    args.update(kw)
    return HFConfig(**args)


def make_hf(cls_name: str, config, seed: int = 0):
    """A seeded transformers model whose every weight (biases and LayerNorms too) is random, in eval mode."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def awkward_batch(T: int = 23, B: int = 3, seed: int = 0):
    """ids (B, T) with padding at the end of row 1 and row 2, global tokens at the start, in the middle,
    at the very end, on a padded position (must be ignored), and none at all in row 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - max(1, T // 4):] = 0
    mask[2, T - T // 2:] = 0
    ids[mask == 0] = PAD
    glob = torch.zeros(B, T, dtype=torch.long)
    glob[0, [0, T // 2, T - 1]] = 1
    glob[1, [1, T - 1]] = 1  # T - 1 is padded
    return ids, mask, glob
