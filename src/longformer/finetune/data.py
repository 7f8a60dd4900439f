"""Readers for fine-tuning files: jsonl / csv classification, SQuAD-style QA, token tagging.

Every reader returns plain dicts and raises ``DataError`` naming the file, the line and what is
expected, so a user can fix the file rather than read a traceback.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LongformerError

class DataError(LongformerError, ValueError):
    """A data file that cannot be used as given; the message says what to do."""


@dataclass
class ClassificationExample:
    text: str
    label: str | None  # None when predicting
    text_pair: str | None = None
    id: str = ""


@dataclass
class QAExample:
    question: str
    context: str
    answers: list[dict[str, Any]] = field(default_factory=list)  # [{"text", "answer_start"}]
    id: str = ""


@dataclass
class TokenExample:
    tokens: list[str]
    tags: list[str] | None  # None when predicting
    id: str = ""


def _open_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path you passed")
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; pass a .jsonl, .json or .csv file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects) or ``.csv`` file."""
    path = Path(path)
    text = _open_text(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows:
            raise DataError(f"{path} has no data rows (expected a header line and at least one row)")
        return [dict(r) for r in rows]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON ({err}); use .jsonl for one object per line") from err
        if isinstance(data, dict) and "data" in data:
            return [data]  # nested SQuAD file: flattened by the QA reader
        if not isinstance(data, list):
            raise DataError(f"{path} must hold a JSON list of objects (or a SQuAD {{'data': ...}} file)")
        return data
    if suffix not in (".jsonl", ".ndjson"):
        raise DataError(f"{path}: unknown file type {suffix!r}; expected .jsonl, .json or .csv")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number} is not a JSON object ({err}); .jsonl needs one object per line") from err
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number} is {type(row).__name__}, expected a JSON object")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} is empty; expected at least one example")
    return rows


def _require(row: dict[str, Any], keys: tuple[str, ...], path: Path, number: int) -> None:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise DataError(
            f"{path} row {number}: missing column(s) {missing}; found {sorted(row)}. "
            f"Each row needs {list(keys)}"
        )


def load_classification(path: str | Path, *, require_label: bool = True) -> list[ClassificationExample]:
    """Rows with ``text`` and ``label`` (and optional ``text_pair``, ``id``).

    Labels are kept as strings (``1`` and ``"1"`` are the same class). Empty texts raise: an empty
    document has nothing to classify, and silently scoring it would bias the metrics.
    """
    path = Path(path)
    keys = ("text", "label") if require_label else ("text",)
    out = []
    for number, row in enumerate(read_records(path), start=1):
        _require(row, keys, path, number)
        text = str(row["text"])
        if not text.strip():
            raise DataError(f"{path} row {number}: empty text; remove the row or fill in the document")
        label = _label_str(row["label"]) if "label" in row and row["label"] is not None else None
        pair = row.get("text_pair")
        out.append(ClassificationExample(text, label, None if pair in (None, "") else str(pair), str(row.get("id", number - 1))))
    return out


def _label_str(label: Any) -> str:
    if isinstance(label, bool):
        return "true" if label else "false"
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def load_qa(path: str | Path, *, require_answers: bool = True) -> list[QAExample]:
    """SQuAD-style QA: jsonl rows ``{question, context, answers: {text: [...], answer_start: [...]}}``
    (the Hugging Face datasets layout; a list of ``{text, answer_start}`` dicts also works), or the
    nested SQuAD ``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`` json file."""
    path = Path(path)
    rows = read_records(path)
    if len(rows) == 1 and "data" in rows[0]:
        rows = _flatten_squad(rows[0], path)
    out = []
    keys = ("question", "context", "answers") if require_answers else ("question", "context")
    for number, row in enumerate(rows, start=1):
        _require(row, keys, path, number)
        context = str(row["context"])
        if not context.strip():
            raise DataError(f"{path} row {number}: empty context; remove the row or fill in the context")
        answers = _answers(row.get("answers"), context, path, number)
        out.append(QAExample(str(row["question"]), context, answers, str(row.get("id", number - 1))))
    return out


def _flatten_squad(doc: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        for article in doc["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    rows.append({"id": qa.get("id", len(rows)), "question": qa["question"],
                                 "context": para["context"], "answers": qa.get("answers", [])})
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: not a SQuAD file (missing {err}); expected data/paragraphs/qas") from err
    return rows


def _answers(raw: Any, context: str, path: Path, number: int) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, dict):  # {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if isinstance(texts, str):
            texts, starts = [texts], [starts]
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    answers = []
    for ans in raw:
        if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
            raise DataError(f"{path} row {number}: each answer needs 'text' and 'answer_start', got {ans!r}")
        start, text = int(ans["answer_start"]), str(ans["text"])
        if context[start : start + len(text)] != text:
            raise DataError(
                f"{path} row {number}: answer {text!r} is not at answer_start={start} in the context "
                f"(found {context[start:start + len(text)]!r}); answer_start counts characters from 0"
            )
        answers.append({"text": text, "answer_start": start})
    return answers


def load_token_classification(path: str | Path, *, require_tags: bool = True) -> list[TokenExample]:
    """jsonl rows ``{tokens: [...], tags: [...]}`` (``ner_tags`` is accepted as an alias of ``tags``)."""
    path = Path(path)
    out = []
    for number, row in enumerate(read_records(path), start=1):
        if "tags" not in row and "ner_tags" in row:
            row = {**row, "tags": row["ner_tags"]}
        _require(row, ("tokens", "tags") if require_tags else ("tokens",), path, number)
        tokens = [str(t) for t in row["tokens"]]
        if not tokens:
            raise DataError(f"{path} row {number}: empty 'tokens'; remove the row")
        tags = [str(t) for t in row["tags"]] if row.get("tags") is not None else None
        if tags is not None and len(tags) != len(tokens):
            raise DataError(f"{path} row {number}: {len(tokens)} tokens but {len(tags)} tags; they must match")
        out.append(TokenExample(tokens, tags, str(row.get("id", number - 1))))
    return out
