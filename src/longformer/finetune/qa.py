"""Extractive QA: strided context windows, span targets, and span extraction from logits.

A context longer than the model is cut into windows of ``max_length`` tokens (question included)
that overlap by ``doc_stride`` tokens, so every answer lies whole inside at least one window;
answers are scored across all windows of an example. The question tokens (and the leading
[CLS]/<s>) get global attention, as in the Longformer paper's QA setup.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .data import DataError, QAExample


def qa_features(
    tokenizer: Any, examples: list[QAExample], max_length: int, doc_stride: int, *, with_targets: bool,
) -> list[dict[str, Any]]:
    """Windows of every example: ``input_ids``, ``token_type_ids``, ``global``, ``example_index``,
    ``offsets`` (char span in the context per token, None outside the context) and, when
    ``with_targets``, ``start_positions``/``end_positions`` (token indices; 0 = answer not in window).
    """
    if not 0 <= doc_stride < max_length:
        raise ValueError(f"doc_stride must be in [0, max_length={max_length}), got {doc_stride}")
    feats: list[dict[str, Any]] = []
    tokenizer.enable_truncation(max_length, stride=doc_stride, strategy="only_second")
    try:
        for index, ex in enumerate(examples):
            q_len = len(tokenizer.encode(ex.question, add_special_tokens=False).ids)
            if q_len + 8 + doc_stride >= max_length:  # room for specials and a real context window
                raise DataError(
                    f"question of example {ex.id!r} has {q_len} tokens, too long for max_length={max_length} "
                    f"with doc_stride={doc_stride}; shorten the question or lower --doc-stride"
                )
            first = tokenizer.encode(ex.question, ex.context)
            for enc in [first, *first.overflowing]:
                feats.append(_window(enc, ex, index, with_targets))
    finally:
        tokenizer.no_truncation()
    return feats


def _window(enc: Any, ex: QAExample, index: int, with_targets: bool) -> dict[str, Any]:
    seq = enc.sequence_ids
    last_question = max(i for i, s in enumerate(seq) if s == 0)
    offsets = [tuple(o) if s == 1 else None for o, s in zip(enc.offsets, seq)]
    feat: dict[str, Any] = {
        "input_ids": enc.ids, "token_type_ids": enc.type_ids, "example_index": index, "offsets": offsets,
        "global": [1 if i <= last_question else 0 for i in range(len(enc.ids))],
    }
    if with_targets:
        start = end = 0
        if ex.answers:  # train on the first answer, as SQuAD v1 training does
            a_start = ex.answers[0]["answer_start"]
            a_end = a_start + len(ex.answers[0]["text"])
            ctx = [i for i, o in enumerate(offsets) if o is not None]
            if ctx and offsets[ctx[0]][0] <= a_start and offsets[ctx[-1]][1] >= a_end:
                start = next(i for i in ctx if offsets[i][1] > a_start)
                end = next(i for i in reversed(ctx) if offsets[i][0] < a_end)
        feat["start_positions"], feat["end_positions"] = start, end
    return feat


def extract_answers(
    examples: list[QAExample], feats: list[dict[str, Any]], start_logits: list[np.ndarray],
    end_logits: list[np.ndarray], *, n_best: int = 20, max_answer_length: int = 30,
) -> list[str]:
    """Best answer text per example: the highest ``start + end`` logit span over all its windows,
    both ends inside the context, ``start <= end`` and at most ``max_answer_length`` tokens.
    ``start_logits[i]``/``end_logits[i]`` are (T_i,) arrays for ``feats[i]``. Empty string if none."""
    best: dict[int, tuple[float, str]] = {}
    for feat, s_log, e_log in zip(feats, start_logits, end_logits):
        ex = examples[feat["example_index"]]
        offsets = feat["offsets"]
        n = len(offsets)
        s_log, e_log = np.asarray(s_log[:n]), np.asarray(e_log[:n])
        starts = np.argsort(s_log)[::-1][:n_best]
        ends = np.argsort(e_log)[::-1][:n_best]
        for s in starts:
            if offsets[s] is None:
                continue
            for e in ends:
                if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(s_log[s] + e_log[e])
                idx = feat["example_index"]
                if idx not in best or score > best[idx][0]:
                    best[idx] = (score, ex.context[offsets[s][0] : offsets[e][1]])
    return [best.get(i, (0.0, ""))[1] for i in range(len(examples))]
