"""Evaluation metrics: classification accuracy/F1, SQuAD exact match/F1, token and entity F1."""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence


def _f1(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def positive_label(labels: Sequence[str]) -> str | None:
    """The positive class of a binary task: ``true``/``1``/``yes``/``positive`` if present, else
    the second label in sorted order; None when there are not exactly two labels."""
    labels = sorted(set(labels))
    if len(labels) != 2:
        return None
    for name in ("true", "1", "yes", "positive", "pos"):
        if name in labels:
            return name
    return labels[1]


def classification_metrics(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """``accuracy``, ``macro_f1`` over ``labels`` and, for two labels, ``f1`` of the positive class
    (see ``positive_label``) — the number the Hyperpartisan task reports."""
    if len(gold) != len(pred) or not gold:
        raise ValueError(f"need equally many gold and predicted labels (>0), got {len(gold)} and {len(pred)}")
    out = {"accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold)}
    per_class = {}
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        per_class[label] = _f1(tp, fp, fn)
    out["macro_f1"] = sum(per_class.values()) / len(per_class)
    pos = positive_label(labels)
    if pos is not None:
        out["f1"] = per_class[pos]
        out["positive_label"] = pos  # type: ignore[assignment]
    return out


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles (a/an/the), squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(gold: str, pred: str) -> float:
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((collections.Counter(g) & collections.Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(golds: Sequence[Sequence[str]], preds: Sequence[str]) -> dict[str, float]:
    """``exact_match`` and ``f1`` in percent, each the max over an example's gold answers (an
    example with no gold answer counts as correct only for an empty prediction)."""
    if len(golds) != len(preds) or not preds:
        raise ValueError(f"need equally many gold answer lists and predictions (>0), got {len(golds)} and {len(preds)}")
    em = f1 = 0.0
    for gold, pred in zip(golds, preds):
        gold = list(gold) or [""]
        em += max(float(normalize_answer(g) == normalize_answer(pred)) for g in gold)
        f1 += max(_token_f1(g, pred) for g in gold)
    return {"exact_match": 100.0 * em / len(preds), "f1": 100.0 * f1 / len(preds)}


def _entities(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) spans from BIO/IOB2 tags; an I- without a matching B- starts an entity."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, name = tag.split("-", 1) if "-" in tag else ("O", "")
        if start is not None and (prefix != "I" or name != kind):  # the open entity ends here
            spans.add((start, i, kind))
            start = None
        if prefix in ("B", "I") and start is None:
            start, kind = i, name
    return spans


def token_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Per-word ``accuracy``, ``token_macro_f1`` over tags other than ``O``, and — when tags look
    like BIO (``B-X``/``I-X``) — ``entity_f1`` (exact span and type match, seqeval-style)."""
    flat_g = [t for seq in gold for t in seq]
    flat_p = [t for seq in pred for t in seq]
    if len(flat_g) != len(flat_p) or not flat_g:
        raise ValueError(f"need equally many gold and predicted tags (>0), got {len(flat_g)} and {len(flat_p)}")
    out = {"accuracy": sum(g == p for g, p in zip(flat_g, flat_p)) / len(flat_g)}
    labels = sorted({t for t in flat_g if t != "O"}) or sorted(set(flat_g))
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(flat_g, flat_p))
        fp = sum(g != label and p == label for g, p in zip(flat_g, flat_p))
        fn = sum(g == label and p != label for g, p in zip(flat_g, flat_p))
        f1s.append(_f1(tp, fp, fn))
    out["token_macro_f1"] = sum(f1s) / len(f1s)
    if any(t[:2] in ("B-", "I-") for t in flat_g):
        tp = fp = fn = 0
        for g, p in zip(gold, pred):
            ge, pe = _entities(g), _entities(p)
            tp += len(ge & pe)
            fp += len(pe - ge)
            fn += len(ge - pe)
        out["entity_f1"] = _f1(tp, fp, fn)
    return out
