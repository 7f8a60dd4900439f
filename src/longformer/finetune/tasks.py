"""Fine-tuning tasks as objects: one class per task, registered by name in `TASKS`.

A task owns everything that differs between tasks: reading its files, its label set, features, the
loss, turning logits into predictions, metrics and the metric that picks the best checkpoint, the
rows `predict` writes, and the encoder head class. The trainer and `predict` only call these
methods, so a new task is one new class plus one registry entry. `get_task` refuses an unknown name
with the registered ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .data import DataError, load_classification, load_qa, load_token_classification
from .features import IGNORE, LengthReport, classification_features, token_features
from .metrics import classification_metrics, squad_metrics, token_metrics
from .qa import extract_answers, qa_features


class Task(Protocol):
    """What a fine-tuning task provides. ``labels`` is the sorted label list of the training data
    (empty for QA); ``out`` is the encoder head's output; feature dicts are `features.py`'s."""

    name: str
    head: str  # class name in longformer.encoder
    default_metric: str  # "a|b": the first one the metrics contain

    def load_examples(self, path: str | Path, *, require_labels: bool = True) -> list[Any]: ...
    def label_list(self, examples: list[Any]) -> list[str]: ...
    def check_train_labels(self, labels: list[str]) -> None: ...
    def head_overrides(self, labels: list[str]) -> dict[str, Any]: ...
    def features(self, tokenizer: Any, examples: list[Any], label_to_id: dict[str, int] | None, *, max_length: int,
                 truncate: bool, doc_stride: int, name: str) -> tuple[list[dict[str, Any]], LengthReport]: ...
    def units(self, feat: dict[str, Any]) -> int: ...
    def loss_sum(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...
    def outputs_to_numpy(self, out: Any, n_tokens: list[int]) -> list[dict[str, np.ndarray]]: ...
    def decode(self, examples: list[Any], feats: list[dict[str, Any]], outputs: list[dict[str, np.ndarray]],
               labels: list[str]) -> list[Any]: ...
    def score(self, examples: list[Any], preds: list[Any], labels: list[str]) -> dict[str, float]: ...
    def has_gold(self, examples: list[Any]) -> bool: ...
    def prediction_row(self, example: Any, pred: Any, output: dict[str, np.ndarray], labels: list[str]) -> dict: ...


def _need_two(labels: list[str], what: str) -> None:
    if len(labels) < 2:
        raise DataError(f"training data has {len(labels)} {what}(s) {labels}; a classifier needs at least 2")


class Classification:
    """A label per document; global attention on the first token; loss: cross-entropy."""

    name, head, default_metric = "classification", "LongformerForSequenceClassification", "f1|macro_f1"

    def load_examples(self, path: str | Path, *, require_labels: bool = True) -> list[Any]:
        return load_classification(path, require_label=require_labels)

    def label_list(self, examples: list[Any]) -> list[str]:
        return sorted({ex.label for ex in examples if ex.label is not None})

    def check_train_labels(self, labels: list[str]) -> None:
        _need_two(labels, "label")

    def head_overrides(self, labels: list[str]) -> dict[str, Any]:
        return {"num_labels": len(labels)}

    def features(self, tokenizer: Any, examples: list[Any], label_to_id: dict[str, int] | None, *, max_length: int,
                 truncate: bool, doc_stride: int, name: str) -> tuple[list[dict[str, Any]], LengthReport]:
        return classification_features(tokenizer, examples, label_to_id, max_length, truncate, name)

    def units(self, feat: dict[str, Any]) -> int:
        return 1

    def loss_sum(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(out.logits.float(), batch["labels"], reduction="sum")

    def outputs_to_numpy(self, out: Any, n_tokens: list[int]) -> list[dict[str, np.ndarray]]:
        logits = out.logits.float().cpu().numpy()  # (B, C)
        return [{"logits": logits[b]} for b in range(len(n_tokens))]

    def decode(self, examples: list[Any], feats: list[dict[str, Any]], outputs: list[dict[str, np.ndarray]],
               labels: list[str]) -> list[Any]:
        return [labels[int(np.argmax(o["logits"]))] for o in outputs]

    def score(self, examples: list[Any], preds: list[Any], labels: list[str]) -> dict[str, float]:
        return classification_metrics([ex.label for ex in examples], preds, labels)

    def has_gold(self, examples: list[Any]) -> bool:
        return all(ex.label is not None for ex in examples)

    def prediction_row(self, example: Any, pred: Any, output: dict[str, np.ndarray], labels: list[str]) -> dict:
        p = np.exp(output["logits"] - output["logits"].max())
        return {"label": pred, "probabilities": {lab: float(v) for lab, v in zip(labels, p / p.sum())}}


class QuestionAnswering:
    """Extractive QA over strided context windows; global attention on the question; loss: mean of
    the start and end cross-entropies."""

    name, head, default_metric = "qa", "LongformerForQuestionAnswering", "f1"

    def load_examples(self, path: str | Path, *, require_labels: bool = True) -> list[Any]:
        return load_qa(path, require_answers=require_labels)

    def label_list(self, examples: list[Any]) -> list[str]:
        return []

    def check_train_labels(self, labels: list[str]) -> None:
        return None

    def head_overrides(self, labels: list[str]) -> dict[str, Any]:
        return {}

    def features(self, tokenizer: Any, examples: list[Any], label_to_id: dict[str, int] | None, *, max_length: int,
                 truncate: bool, doc_stride: int, name: str) -> tuple[list[dict[str, Any]], LengthReport]:
        feats = qa_features(tokenizer, examples, max_length, doc_stride, with_targets=label_to_id is not None)
        return feats, LengthReport(name, max_length)  # QA never truncates: long contexts become windows

    def units(self, feat: dict[str, Any]) -> int:
        return 1

    def loss_sum(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        start = F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
        end = F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")
        return (start + end) / 2

    def outputs_to_numpy(self, out: Any, n_tokens: list[int]) -> list[dict[str, np.ndarray]]:
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()  # (B, T) each
        return [{"start": s[b, :n], "end": e[b, :n]} for b, n in enumerate(n_tokens)]

    def decode(self, examples: list[Any], feats: list[dict[str, Any]], outputs: list[dict[str, np.ndarray]],
               labels: list[str]) -> list[Any]:
        return extract_answers(examples, feats, [o["start"] for o in outputs], [o["end"] for o in outputs])

    def score(self, examples: list[Any], preds: list[Any], labels: list[str]) -> dict[str, float]:
        return squad_metrics([[a["text"] for a in ex.answers] for ex in examples], preds)

    def has_gold(self, examples: list[Any]) -> bool:
        return all(bool(ex.answers) for ex in examples)

    def prediction_row(self, example: Any, pred: Any, output: dict[str, np.ndarray], labels: list[str]) -> dict:
        return {"answer": pred}


class TokenClassification:
    """A tag per word; the first sub-word of a word carries its tag; loss: cross-entropy over the
    tagged sub-words (each one loss unit)."""

    name, head, default_metric = "token-classification", "LongformerForTokenClassification", "entity_f1|token_macro_f1"

    def load_examples(self, path: str | Path, *, require_labels: bool = True) -> list[Any]:
        return load_token_classification(path, require_tags=require_labels)

    def label_list(self, examples: list[Any]) -> list[str]:
        return sorted({t for ex in examples if ex.tags is not None for t in ex.tags})

    def check_train_labels(self, labels: list[str]) -> None:
        _need_two(labels, "tag")

    def head_overrides(self, labels: list[str]) -> dict[str, Any]:
        return {"num_labels": len(labels)}

    def features(self, tokenizer: Any, examples: list[Any], label_to_id: dict[str, int] | None, *, max_length: int,
                 truncate: bool, doc_stride: int, name: str) -> tuple[list[dict[str, Any]], LengthReport]:
        return token_features(tokenizer, examples, label_to_id, max_length, truncate, name)

    def units(self, feat: dict[str, Any]) -> int:
        return sum(1 for x in feat["labels"] if x != IGNORE) if "labels" in feat else 1

    def loss_sum(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = out.logits.float()  # (B, T, C)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               ignore_index=IGNORE, reduction="sum")

    def outputs_to_numpy(self, out: Any, n_tokens: list[int]) -> list[dict[str, np.ndarray]]:
        logits = out.logits.float().cpu().numpy()  # (B, T, C)
        return [{"logits": logits[b, :n]} for b, n in enumerate(n_tokens)]

    def decode(self, examples: list[Any], feats: list[dict[str, Any]], outputs: list[dict[str, np.ndarray]],
               labels: list[str]) -> list[Any]:
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

    def score(self, examples: list[Any], preds: list[Any], labels: list[str]) -> dict[str, float]:
        return token_metrics([ex.tags for ex in examples], preds)

    def has_gold(self, examples: list[Any]) -> bool:
        return all(ex.tags is not None for ex in examples)

    def prediction_row(self, example: Any, pred: Any, output: dict[str, np.ndarray], labels: list[str]) -> dict:
        return {"tokens": example.tokens, "tags": pred}


TASKS: dict[str, Task] = {t.name: t for t in (Classification(), QuestionAnswering(), TokenClassification())}


def get_task(name: str) -> Task:
    """The registered task called ``name``; an unknown name is a DataError listing the registered ones."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; registered tasks: {', '.join(TASKS)}")
    return TASKS[name]


def model_class(task: Task) -> Any:
    """The encoder head class of ``task`` (imported lazily: loading torch modules is not free)."""
    from longformer import encoder

    return getattr(encoder, task.head)


def check_labels(task: Task, labels: list[str], examples: list[Any], name: str) -> None:
    """Evaluation labels must be ones the model was trained on: a new label can never be predicted."""
    unseen = set(task.label_list(examples)) - set(labels)
    if unseen:
        raise DataError(
            f"{name} has label(s) {sorted(unseen)} that training never saw (training labels: {labels}); "
            f"fix or drop those rows, or add training examples with these labels"
        )


def build_features(
    task: Task, tokenizer: Any, examples: list[Any], labels: list[str], *, max_length: int, truncate: bool,
    doc_stride: int, name: str, with_targets: bool,
) -> list[dict[str, Any]]:
    """Tokenized features; raises on over-long inputs unless ``truncate`` (then warns with counts).

    Every feature gets ``units``: how many loss terms it contributes (1 per example; labelled words
    for token classification), used to normalise the loss over a whole optimizer step.
    """
    label_to_id = {label: i for i, label in enumerate(labels)} if with_targets else None
    feats, report = task.features(tokenizer, examples, label_to_id, max_length=max_length, truncate=truncate,
                                  doc_stride=doc_stride, name=name)
    report.check(truncate)
    for f in feats:
        f["units"] = task.units(f)
    return feats


def selection_metric(task: Task, metrics: dict[str, float], name: str | None) -> tuple[str, float]:
    """The metric that picks the best checkpoint: ``name``, or the task default (first one present)."""
    for candidate in (name or task.default_metric).split("|"):
        if candidate in metrics:
            return candidate, float(metrics[candidate])
    raise DataError(f"--metric {name!r} is not among the computed metrics {sorted(metrics)}")


def read_finetune_info(model_dir: str | Path) -> dict[str, Any]:
    """The ``finetune.json`` a fine-tuned checkpoint carries (task, labels, lengths)."""
    from .._files import read_json

    path = Path(model_dir) / "finetune.json"
    if not path.is_file():
        raise DataError(f"{model_dir} has no finetune.json: pass a directory written by `longformer finetune` "
                        f"(its best/ checkpoint)")
    info = read_json(path)
    if not isinstance(info, dict) or "task" not in info or "labels" not in info:
        raise DataError(f"{path} lacks the task and labels `longformer finetune` writes; re-run the fine-tuning")
    return info

