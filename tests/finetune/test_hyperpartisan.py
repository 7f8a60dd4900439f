"""The SemEval Hyperpartisan files as distributed: parsing, the leaky paper split and the leak-free one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from longformer.finetune import hyperpartisan as hp


@pytest.fixture(scope="module")
def hp_dir(shared_data: Path) -> Path:
    return shared_data / "hyperpartisan"


def test_articles_are_plain_text(hp_dir: Path) -> None:
    articles = hp.read_articles(hp_dir)
    assert len(articles) == 645
    assert sum(a["label"] == "true" for a in articles) == 238
    assert not any("<p>" in a["text"] or "<a " in a["text"] or "</" in a["text"] for a in articles)
    first = articles[0]
    assert first["id"] == "0000000" and first["text"].startswith("Kucinich: Reclaiming the money power\n\n")
    assert "The walls are closing in on Congress." in first["text"]


def test_paper_split_leaks_and_leak_free_does_not(hp_dir: Path) -> None:
    paper = hp.split_report(hp.load_splits(hp_dir, "paper"))
    assert paper["overlap"] == {"dev&test": 7, "dev&train": 0, "test&train": 51}
    assert (paper["train"]["size"], paper["dev"]["size"], paper["test"]["size"]) == (516, 64, 65)
    clean = hp.load_splits(hp_dir, "leak-free")
    report = hp.split_report(clean)
    assert set(report["overlap"].values()) == {0}
    assert [r["id"] for r in clean["test"]] == [r["id"] for r in hp.load_splits(hp_dir, "paper")["test"]]
    assert sum(report[s]["size"] for s in ("train", "dev", "test")) == 645  # every article used once
    strat = hp.split_report(hp.load_splits(hp_dir, "stratified", seed=1))
    assert set(strat["overlap"].values()) == {0} and strat["test"]["size"] == 65


def test_export_writes_jsonl(hp_dir: Path, tmp_path: Path) -> None:
    paths = hp.export_jsonl(hp_dir, tmp_path, "leak-free")
    rows = [json.loads(line) for line in paths["dev"].read_text().splitlines()]
    assert len(rows) == 57 and set(rows[0]) == {"id", "text", "label"}


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(hp.DataError, match="ground-truth-training-byarticle"):
        hp.read_articles(tmp_path)
