"""Tokenization with the model directory's ``tokenizer.json``, length-bucketed batches, padding.

A feature is a dict of python lists (``input_ids``, ``token_type_ids``, ``global`` (0/1) and the
task's targets); ``collate`` pads a batch of them to its own longest length (dynamic padding).
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..encoder.tokenizer import load_tokenizer  # noqa: F401 -- the one tokenizer loader, used by the tasks
from .data import ClassificationExample, DataError, TokenExample

IGNORE = -100  # target value the losses skip (padding, sub-word continuations)


def pad_id(tokenizer: Any) -> int:
    """Id of the padding token ([PAD] for BERT vocabularies, <pad> for RoBERTa); 0 if it has none."""
    for name in ("[PAD]", "<pad>", "<PAD>"):
        idx = tokenizer.token_to_id(name)
        if idx is not None:
            return idx
    return 0


@dataclass
class LengthReport:
    """How many inputs exceeded ``max_length`` and, with truncation, how many tokens were dropped."""

    name: str
    max_length: int
    too_long: int = 0
    total: int = 0
    tokens_dropped: int = 0
    longest: int = 0

    def check(self, truncate: bool) -> None:
        """Raise (``--no-truncate``) or warn with the counts (truncation) when inputs exceeded the model length."""
        if not self.too_long:
            return
        what = (f"{self.too_long} of {self.total} {self.name} examples are longer than max_length="
                f"{self.max_length} tokens (longest {self.longest})")
        if not truncate:
            raise DataError(
                f"{what}. Nothing is cut silently: pass --truncate to keep the first {self.max_length} "
                f"tokens of each, or use a longer model (longformer convert --max-length N)"
            )
        warnings.warn(
            f"{what}; truncation kept the first {self.max_length} tokens of each and cut {self.tokens_dropped} "
            "tokens in total (--no-truncate makes this an error; longformer convert --max-length N makes a "
            "longer model)",
            stacklevel=2,
        )


def classification_features(
    tokenizer: Any, examples: list[ClassificationExample], label_to_id: dict[str, int] | None,
    max_length: int, truncate: bool, name: str,
) -> tuple[list[dict[str, Any]], LengthReport]:
    """One feature per example; global attention on the first token ([CLS]/<s>)."""
    report = LengthReport(name, max_length, total=len(examples))
    feats = []
    for ex in examples:
        enc = tokenizer.encode(ex.text, ex.text_pair) if ex.text_pair else tokenizer.encode(ex.text)
        ids, types = enc.ids, enc.type_ids
        if len(ids) > max_length:
            report.too_long += 1
            report.longest = max(report.longest, len(ids))
            report.tokens_dropped += len(ids) - max_length
            if truncate:  # keep the closing special token(s) of the template
                tokenizer.enable_truncation(max_length)
                enc = tokenizer.encode(ex.text, ex.text_pair) if ex.text_pair else tokenizer.encode(ex.text)
                tokenizer.no_truncation()
                ids, types = enc.ids, enc.type_ids
        feat: dict[str, Any] = {"input_ids": ids, "token_type_ids": types, "global": [1] + [0] * (len(ids) - 1)}
        if label_to_id is not None and ex.label is not None:
            feat["labels"] = label_to_id[ex.label]
        feats.append(feat)
    return feats, report


def token_features(
    tokenizer: Any, examples: list[TokenExample], label_to_id: dict[str, int] | None,
    max_length: int, truncate: bool, name: str,
) -> tuple[list[dict[str, Any]], LengthReport]:
    """Pre-tokenized words; the first sub-word of each word carries its tag, the rest ``IGNORE``.

    No token is global (as transformers' token classification): tagging needs local context only.

    ``word_ids`` (one per token, -1 for special tokens) is kept to map predictions back to words.
    """
    report = LengthReport(name, max_length, total=len(examples))
    feats = []
    for ex in examples:
        enc = tokenizer.encode(ex.tokens, is_pretokenized=True)
        if len(enc.ids) > max_length:
            report.too_long += 1
            report.longest = max(report.longest, len(enc.ids))
            report.tokens_dropped += len(enc.ids) - max_length
            if truncate:
                tokenizer.enable_truncation(max_length)
                enc = tokenizer.encode(ex.tokens, is_pretokenized=True)
                tokenizer.no_truncation()
        word_ids = [-1 if w is None else w for w in enc.word_ids]
        labels, seen = [], set()
        for w in word_ids:
            if w < 0 or w in seen or label_to_id is None or ex.tags is None:
                labels.append(IGNORE)
            else:
                labels.append(label_to_id[ex.tags[w]])
            if w >= 0:
                seen.add(w)
        feat: dict[str, Any] = {"input_ids": enc.ids, "token_type_ids": enc.type_ids,
                                "global": [0] * len(enc.ids), "word_ids": word_ids}
        if label_to_id is not None and ex.tags is not None:
            feat["labels"] = labels
        feats.append(feat)
    return feats, report


def bucketed_batches(lengths: list[int], batch_size: int, *, shuffle: bool, seed: int,
                     bucket_factor: int = 50) -> list[list[int]]:
    """Index batches of similar lengths (less padding) in a seeded random order.

    Shuffle, cut into pools of ``bucket_factor * batch_size``, sort each pool by length, cut into
    batches, then shuffle the batches: randomness of order is kept, padding mostly disappears.
    Without ``shuffle`` (evaluation) the whole set is sorted by length.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    pool = max(batch_size * bucket_factor, batch_size)
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(feats: list[dict[str, Any]], pad: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Pad a list of features to the batch's longest sequence (rounded up to ``pad_to_multiple_of``).

    Returns int64 tensors ``input_ids``, ``token_type_ids``, ``attention_mask`` (1 = token),
    ``global_attention_mask`` (1 = global), all (B, T), plus the targets present in the features.
    """
    T = max(len(f["input_ids"]) for f in feats)
    T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(feats)
    out = {
        "input_ids": torch.full((B, T), pad, dtype=torch.long),
        "token_type_ids": torch.zeros((B, T), dtype=torch.long),
        "attention_mask": torch.zeros((B, T), dtype=torch.long),
        "global_attention_mask": torch.zeros((B, T), dtype=torch.long),
    }
    for b, f in enumerate(feats):
        n = len(f["input_ids"])
        out["input_ids"][b, :n] = torch.tensor(f["input_ids"])
        out["token_type_ids"][b, :n] = torch.tensor(f["token_type_ids"])
        out["attention_mask"][b, :n] = 1
        out["global_attention_mask"][b, :n] = torch.tensor(f["global"])
    first = feats[0]
    if "labels" in first:
        if isinstance(first["labels"], list):
            lab = torch.full((B, T), IGNORE, dtype=torch.long)
            for b, f in enumerate(feats):
                lab[b, : len(f["labels"])] = torch.tensor(f["labels"])
            out["labels"] = lab
        else:
            out["labels"] = torch.tensor([f["labels"] for f in feats], dtype=torch.long)
    for key in ("start_positions", "end_positions"):
        if key in first:
            out[key] = torch.tensor([f[key] for f in feats], dtype=torch.long)
    return out
