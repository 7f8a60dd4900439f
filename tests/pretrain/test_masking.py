"""BERT masking: 15% of the maskable tokens, 80/10/10, specials and padding never touched."""
from __future__ import annotations

import torch

from longformer.pretrain.data import Vocab
from longformer.pretrain.masking import IGNORE, mask_tokens, sequence_generator

VOCAB = Vocab(cls=2, sep=3, pad=0, mask=4, size=50, special=(0, 1, 2, 3, 4))


def _sample(n: int = 400_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB.size, (n,), generator=g)  # specials included, about 10% of the tokens
    return ids, torch.rand(n, generator=g) < 0.9  # 10% padding positions


def test_rates_within_tolerance() -> None:
    ids, valid = _sample()
    inputs, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(1), valid=valid)
    special = torch.isin(ids, torch.tensor(VOCAB.special))
    eligible = valid & ~special
    chosen = labels != IGNORE
    n = int(eligible.sum())
    assert abs(int(chosen.sum()) / n - 0.15) < 0.003  # binomial sd here is ~0.0006
    c = int(chosen.sum())
    to_mask = chosen & (inputs == VOCAB.mask)
    kept = chosen & (inputs == ids)
    replaced = chosen & (inputs != VOCAB.mask) & (inputs != ids)
    assert abs(int(to_mask.sum()) / c - 0.8) < 0.01
    # a random draw equals the original 1/45 of the time: those count as "kept" (as in BERT)
    assert abs(int(replaced.sum()) / c - 0.1 * 44 / 45) < 0.01
    assert abs(int(kept.sum()) / c - (0.1 + 0.1 / 45)) < 0.01
    # labels are the original ids exactly where chosen
    assert torch.equal(labels[chosen], ids[chosen])


def test_specials_and_padding_never_masked() -> None:
    ids, valid = _sample()
    inputs, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(2), valid=valid, probability=0.9)
    special = torch.isin(ids, torch.tensor(VOCAB.special))
    untouched = special | ~valid
    assert bool((labels[untouched] == IGNORE).all())
    assert torch.equal(inputs[untouched], ids[untouched])
    # a random replacement is never a special token (only [MASK] itself may appear where a word was)
    changed = (labels != IGNORE) & (inputs != VOCAB.mask)
    assert not bool(torch.isin(inputs[changed], torch.tensor(VOCAB.special)).any())


def test_seeded_and_shaped() -> None:
    ids = torch.randint(5, 50, (3, 17))
    a = mask_tokens(ids, VOCAB, sequence_generator(7, 1, 2))
    b = mask_tokens(ids, VOCAB, sequence_generator(7, 1, 2))
    c = mask_tokens(ids, VOCAB, sequence_generator(7, 2, 2))  # another epoch: another mask
    assert a[0].shape == (3, 17) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
