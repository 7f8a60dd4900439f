"""Readers: the formats accepted and the errors for files that cannot be used."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_helpers import write_jsonl

from longformer.finetune.data import DataError, load_classification, load_qa, load_token_classification


def test_jsonl_and_csv_classification(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x y", "label": 1}, {"text": "z", "label": 0, "text_pair": "w"}])
    rows = load_classification(tmp_path / "a.jsonl")
    assert [r.label for r in rows] == ["1", "0"] and rows[1].text_pair == "w" and rows[0].text_pair is None
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",true\nbye,false\n')
    rows = load_classification(tmp_path / "a.csv")
    assert [(r.text, r.label) for r in rows] == [("hello, world", "true"), ("bye", "false")]


def test_missing_column_names_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 1}, {"sentence": "y", "label": 0}])
    with pytest.raises(DataError, match=r"row 2: missing column\(s\) \['text'\]"):
        load_classification(tmp_path / "a.jsonl")


def test_empty_document_is_an_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "   ", "label": 1}])
    with pytest.raises(DataError, match="empty text"):
        load_classification(tmp_path / "a.jsonl")


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b'{"text": "a", "label": 1}\nnot json\n', r":2 is not a JSON object"),
    (b"", "is empty"),
])
def test_unreadable_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "f.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_classification(path)


def test_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "f.parquet").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_classification(tmp_path / "f.parquet")


def test_qa_flat_and_nested(tmp_path: Path) -> None:
    ctx = "Paris is the capital of France."
    write_jsonl(tmp_path / "q.jsonl", [{"question": "capital?", "context": ctx,
                                        "answers": {"text": ["Paris"], "answer_start": [0]}}])
    nested = {"data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": [
        {"id": "q1", "question": "capital?", "answers": [{"text": "France", "answer_start": 24}]}]}]}]}
    (tmp_path / "q.json").write_text(json.dumps(nested))
    assert load_qa(tmp_path / "q.jsonl")[0].answers == [{"text": "Paris", "answer_start": 0}]
    ex = load_qa(tmp_path / "q.json")[0]
    assert ex.id == "q1" and ex.answers == [{"text": "France", "answer_start": 24}]


def test_qa_answer_must_be_at_its_offset(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "context": "abc def",
                                        "answers": {"text": ["def"], "answer_start": [3]}}])
    with pytest.raises(DataError, match="not at answer_start=3"):
        load_qa(tmp_path / "q.jsonl")


def test_token_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "ner_tags": ["B-X", "O"]}])
    assert load_token_classification(tmp_path / "t.jsonl")[0].tags == ["B-X", "O"]
    write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match="2 tokens but 1 tags"):
        load_token_classification(tmp_path / "t.jsonl")


def test_commands_are_registered_in_the_main_cli() -> None:
    from longformer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["finetune", "--task", "qa", "--model", "m", "--train", "t", "--validation", "v",
                              "--out", "o", "--doc-stride", "64", "--bf16"])
    assert args.task == "qa" and args.doc_stride == 64 and args.bf16 and args.lr == 3e-5 and callable(args.func)
    assert callable(parser.parse_args(["predict", "--model", "m", "--input", "i", "--output", "o"]).func)
