"""Seeded random tiny transformers LEDs and input batches for the LED parity tests."""
from __future__ import annotations

import pytest
import torch

TINY = dict(
    vocab_size=71, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=2, encoder_ffn_dim=40, decoder_ffn_dim=36, max_encoder_position_embeddings=96,
    max_decoder_position_embeddings=48, attention_window=[4, 8], dropout=0.0, init_std=0.2,
)


def hf_led(seed: int = 0, **overrides):
    """A seeded random transformers LEDForConditionalGeneration (eval mode) with a non-zero logits bias."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LEDConfig(**{**TINY, **overrides})
    model = transformers.LEDForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)
        model.final_logits_bias[0, config.eos_token_id] += 1.0  # so some beams end before max length
    return model


def batch(B: int = 3, T: int = 29, vocab: int = 71, seed: int = 1, pad: int = 1):
    """input_ids, attention_mask (rows 1.. padded on the right), global mask (first token + a few)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b in range(1, B):
        mask[b, T - 3 * b - 4:] = 0
    ids[mask == 0] = pad
    glob = torch.zeros(B, T, dtype=torch.long)
    glob[:, 0] = 1
    glob[0, T // 2] = 1
    if B > 1:
        glob[1, 3] = 1
        glob[1, T - 2] = 1  # a padded token marked global: padding wins
    return ids, mask, glob
