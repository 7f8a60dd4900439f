"""Tokenization (never cut silently), length-bucketed batches and dynamic padding."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longformer.finetune.data import ClassificationExample, DataError, TokenExample
from longformer.finetune.features import (IGNORE, bucketed_batches, classification_features, collate,
                                          load_tokenizer, token_features)


def test_saved_truncation_and_padding_are_switched_off(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)  # the saved file says: truncate to 16, pad to 16
    ids = tok.encode(" ".join(["alpha"] * 30)).ids
    assert len(ids) == 32 and ids[0] == tok.token_to_id("[CLS]")


def test_too_long_is_an_error_unless_truncate(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    examples = [ClassificationExample(" ".join(["beta"] * n), "a") for n in (5, 20, 30)]
    with pytest.raises(DataError, match=r"2 of 3 train examples are longer than max_length=16.*--truncate"):
        classification_features(tok, examples, {"a": 0}, 16, False, "train")[1].check(False)
    feats, report = classification_features(tok, examples, {"a": 0}, 16, True, "train")
    with pytest.warns(UserWarning, match=r"2 of 3 .* cut 22 tokens"):
        report.check(True)
    assert [len(f["input_ids"]) for f in feats] == [7, 16, 16]
    assert feats[1]["input_ids"][-1] == tok.token_to_id("[SEP]")  # the template's closing token is kept
    assert feats[0]["global"] == [1] + [0] * 6 and feats[0]["labels"] == 0


def test_token_labels_on_first_subword(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    feats, _ = token_features(tok, [TokenExample(["paris", "is", "big"], ["B-LOC", "O", "O"])],
                              {"B-LOC": 0, "O": 1}, 16, False, "t")
    assert feats[0]["labels"] == [IGNORE, 0, 1, 1, IGNORE]
    assert feats[0]["word_ids"] == [-1, 0, 1, 2, -1] and sum(feats[0]["global"]) == 0


def test_bucketing_covers_everything_and_groups_lengths() -> None:
    lengths = [(i * 37) % 101 for i in range(200)]
    batches = bucketed_batches(lengths, 8, shuffle=True, seed=1, bucket_factor=25)
    assert sorted(i for b in batches for i in b) == list(range(200))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches would spread ~75
    assert batches == bucketed_batches(lengths, 8, shuffle=True, seed=1, bucket_factor=25)
    assert batches != bucketed_batches(lengths, 8, shuffle=True, seed=2, bucket_factor=25)
    evals = bucketed_batches(lengths, 8, shuffle=False, seed=0)
    assert [lengths[i] for b in evals for i in b] == sorted(lengths)


def test_collate_pads_to_the_longest() -> None:
    feats = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 0], "global": [1, 0, 0], "labels": 1},
             {"input_ids": [5], "token_type_ids": [0], "global": [1], "labels": 0}]
    batch = collate(feats, pad=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["global_attention_mask"].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert torch.equal(batch["labels"], torch.tensor([1, 0]))
    assert collate(feats, pad=0, pad_to_multiple_of=4)["input_ids"].shape == (2, 4)
