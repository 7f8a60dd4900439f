"""What differs between tasks, in one place: features, loss, model class, decoding and scoring."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import TASKS, DataError
from .features import IGNORE, LengthReport, classification_features, token_features
from .metrics import classification_metrics, squad_metrics, token_metrics
from .qa import extract_answers, qa_features

DEFAULT_METRIC = {"classification": "f1|macro_f1", "qa": "f1", "token-classification": "entity_f1|token_macro_f1"}


def model_class(task: str) -> Any:
    """The encoder head class for ``task`` (imported lazily: loading torch modules is not free)."""
    from longformer import encoder

    names = {"classification": "LongformerForSequenceClassification", "qa": "LongformerForQuestionAnswering",
             "token-classification": "LongformerForTokenClassification"}
    if task not in names:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return getattr(encoder, names[task])


def label_list(task: str, examples: list[Any]) -> list[str]:
    """Sorted label names seen in ``examples`` (empty for QA)."""
    if task == "classification":
        return sorted({ex.label for ex in examples})
    if task == "token-classification":
        return sorted({t for ex in examples for t in ex.tags})
    return []


def check_labels(task: str, labels: list[str], examples: list[Any], name: str) -> None:
    """Evaluation labels must be ones the model was trained on: a new label can never be predicted."""
    unseen = set(label_list(task, examples)) - set(labels)
    if unseen:
        raise DataError(
            f"{name} has label(s) {sorted(unseen)} that training never saw (training labels: {labels}); "
            f"fix or drop those rows, or add training examples with these labels"
        )


def build_features(
    task: str, tokenizer: Any, examples: list[Any], labels: list[str], *, max_length: int, truncate: bool,
    doc_stride: int, name: str, with_targets: bool,
) -> list[dict[str, Any]]:
    """Tokenized features; raises on over-long inputs unless ``truncate`` (then warns with counts).

    Every feature gets ``units``: how many loss terms it contributes (1 per example; labelled words
    for token classification), used to normalise the loss over a whole optimizer step.
    """
    label_to_id = {label: i for i, label in enumerate(labels)} if with_targets else None
    if task == "qa":
        feats = qa_features(tokenizer, examples, max_length, doc_stride, with_targets=with_targets)
        report = LengthReport(name, max_length)  # QA never truncates: long contexts become windows
    elif task == "classification":
        feats, report = classification_features(tokenizer, examples, label_to_id, max_length, truncate, name)
    else:
        feats, report = token_features(tokenizer, examples, label_to_id, max_length, truncate, name)
    report.check(truncate)
    for f in feats:
        f["units"] = sum(1 for x in f["labels"] if x != IGNORE) if task == "token-classification" and "labels" in f else 1
    return feats


def loss_sum(task: str, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed (not averaged) loss of a batch in fp32; the trainer divides by the step's unit count so
    that accumulation and any split over processes give the gradient of the global-batch mean."""
    if task == "classification":
        return F.cross_entropy(out.logits.float(), batch["labels"], reduction="sum")
    if task == "token-classification":
        logits = out.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    start = F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
    end = F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")
    return (start + end) / 2


def outputs_to_numpy(task: str, out: Any, n_tokens: list[int]) -> list[dict[str, np.ndarray]]:
    """Per-feature logits, padding removed: classification (C,), token (T_i, C), QA start/end (T_i,)."""
    if task == "qa":
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        return [{"start": s[b, :n], "end": e[b, :n]} for b, n in enumerate(n_tokens)]
    logits = out.logits.float().cpu().numpy()
    if task == "classification":
        return [{"logits": logits[b]} for b in range(len(n_tokens))]
    return [{"logits": logits[b, :n]} for b, n in enumerate(n_tokens)]


def decode(task: str, examples: list[Any], feats: list[dict[str, Any]], outputs: list[dict[str, np.ndarray]],
           labels: list[str]) -> list[Any]:
    """Predictions per example: a label, an answer string, or a tag per word."""
    if task == "classification":
        return [labels[int(np.argmax(o["logits"]))] for o in outputs]
    if task == "qa":
        return extract_answers(examples, feats, [o["start"] for o in outputs], [o["end"] for o in outputs])
    preds = []
    for ex, feat, o in zip(examples, feats, outputs):
        tags = ["O" if "O" in labels else labels[0]] * len(ex.tokens)  # words cut by --truncate
        seen = set()
        for pos, w in enumerate(feat["word_ids"]):
            if w >= 0 and w not in seen:
                seen.add(w)
                tags[w] = labels[int(np.argmax(o["logits"][pos]))]
        preds.append(tags)
    return preds


def score(task: str, examples: list[Any], preds: list[Any], labels: list[str]) -> dict[str, float]:
    if task == "classification":
        return classification_metrics([ex.label for ex in examples], preds, labels)
    if task == "qa":
        return squad_metrics([[a["text"] for a in ex.answers] for ex in examples], preds)
    return token_metrics([ex.tags for ex in examples], preds)


def selection_metric(task: str, metrics: dict[str, float], name: str | None) -> tuple[str, float]:
    """The metric that picks the best checkpoint: ``name``, or the task default (first one present)."""
    for candidate in (name or DEFAULT_METRIC[task]).split("|"):
        if candidate in metrics:
            return candidate, float(metrics[candidate])
    raise ValueError(f"--metric {name!r} is not among the computed metrics {sorted(metrics)}")


def read_finetune_info(model_dir: str | Path) -> dict[str, Any]:
    """The ``finetune.json`` a fine-tuned checkpoint carries (task, labels, lengths)."""
    import json

    path = Path(model_dir) / "finetune.json"
    if not path.is_file():
        raise DataError(f"{model_dir} has no finetune.json: pass a directory written by `longformer finetune` "
                        f"(its best/ checkpoint)")
    return json.loads(path.read_text())
