"""BERT's masking for MLM: choose 15% of the maskable tokens; of those, 80% become the mask token,
10% a random token, 10% stay as they are. The model is scored on every chosen token.

Maskable: any token that is not special ([CLS], [SEP], [PAD], [MASK], ... and padding positions).
Random replacements are drawn uniformly from the ordinary (non-special) ids, so a special token
never appears where the text had a word. All randomness comes from the ``generator`` passed in: a
seeded generator gives the same mask on every machine and every run (that makes resumed training
and the evaluation's fixed mask exact).
"""
from __future__ import annotations

import torch

from .data import Vocab

IGNORE = -100  # label of a position the loss skips


def maskable(ids: torch.Tensor, vocab: Vocab, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool tensor of ``ids``' shape: True where a token may be masked (not special, not padding)."""
    special = torch.isin(ids, torch.tensor(vocab.special, dtype=ids.dtype, device=ids.device))
    ok = ~special
    return ok if valid is None else ok & valid


def mask_tokens(ids: torch.Tensor, vocab: Vocab, generator: torch.Generator, *, valid: torch.Tensor | None = None,
                probability: float = 0.15, mask_fraction: float = 0.8,
                random_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``ids`` (any shape, on the CPU) for MLM.

    Each maskable token is chosen independently with ``probability``; a chosen token becomes
    ``vocab.mask`` with probability ``mask_fraction``, a uniformly drawn ordinary id with
    ``random_fraction``, and stays itself otherwise.

    Returns (inputs, labels), both of ``ids``' shape: labels hold the original id at chosen
    positions and `IGNORE` (-100) elsewhere.
    """
    if not 0.0 <= probability <= 1.0 or mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
        raise ValueError(f"bad masking rates: probability {probability}, mask {mask_fraction}, random {random_fraction}")
    shape = ids.shape
    chosen = (torch.rand(shape, generator=generator) < probability) & maskable(ids, vocab, valid)
    action = torch.rand(shape, generator=generator)
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    ordinary = _ordinary_ids(vocab)
    draw = ordinary[torch.randint(len(ordinary), shape, generator=generator)]
    inputs = torch.where(to_mask, torch.full_like(ids, vocab.mask), ids)
    inputs = torch.where(to_random, draw, inputs)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    return inputs, labels


_ORDINARY: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}


def _ordinary_ids(vocab: Vocab) -> torch.Tensor:
    key = (vocab.size, vocab.special)
    if key not in _ORDINARY:
        keep = torch.ones(vocab.size, dtype=torch.bool)
        keep[[i for i in vocab.special if i < vocab.size]] = False
        if not keep.any():
            raise ValueError("the vocabulary has no ordinary (non-special) token to draw random replacements from")
        _ORDINARY[key] = keep.nonzero().flatten()
    return _ORDINARY[key]


def sequence_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one training sequence's mask in one epoch: a fresh mask every epoch (dynamic
    masking, as RoBERTa), fixed by (seed, epoch, index) alone, so a resumed or distributed run
    masks exactly as an uninterrupted single-process one."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63)
