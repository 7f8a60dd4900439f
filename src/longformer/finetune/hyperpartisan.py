"""SemEval-2019 Task 4 (Hyperpartisan, by-article) as distributed: XML articles + ground truth + splits.

The split file used by the Longformer paper (``hp-splits.json``) leaks: 51 of its 65 test ids are
also in train and 7 in dev, and 58 ids are in no split. ``split="paper"`` reproduces it (scores on
it must be labelled leaky); ``split="leak-free"`` keeps the paper's test set, removes the test ids
from dev and train, and gives the 58 unused articles to train, so every article is used exactly
once; ``split="stratified"`` draws fresh 80/10/10 label-stratified folds with a fixed seed.
"""
from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .data import DataError

ARTICLES = "articles-training-byarticle-20181122.xml"
GROUND_TRUTH = "ground-truth-training-byarticle-20181122.xml"
SPLITS = "hp-splits.json"
SPLIT_CHOICES = ("leak-free", "paper", "stratified")
_SPACE = re.compile(r"\s+")


def _parse(path: Path) -> ET.Element:
    if not path.is_file():
        raise DataError(f"{path} not found; a Hyperpartisan dir holds {ARTICLES}, {GROUND_TRUTH} and {SPLITS}")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path} is not well-formed XML ({err}); use the file as distributed") from err


def read_articles(directory: str | Path) -> list[dict[str, str]]:
    """All articles, in file order: ``{"id", "text", "label"}`` with label ``"true"``/``"false"``.

    The text is the title, a blank line, then the body with every HTML/XML tag removed (the body
    holds ``<p>``, ``<a>``, ``<q>`` markup) and whitespace collapsed; link texts are kept because
    they are part of the prose.
    """
    directory = Path(directory)
    labels = {a.get("id"): a.get("hyperpartisan") for a in _parse(directory / GROUND_TRUTH).iter("article")}
    out = []
    for article in _parse(directory / ARTICLES).iter("article"):
        aid = article.get("id")
        if aid not in labels:
            raise DataError(f"article id {aid} has no label in {directory / GROUND_TRUTH}")
        body = _SPACE.sub(" ", " ".join(article.itertext())).strip()
        title = (article.get("title") or "").strip()
        out.append({"id": aid, "text": f"{title}\n\n{body}" if title else body, "label": labels[aid]})
    return out


def split_ids(directory: str | Path, split: str, seed: int = 0,
              articles: list[dict[str, str]] | None = None) -> dict[str, list[str]]:
    """Article ids (as in the XML, e.g. ``"0000042"``) of train/dev/test for ``split``
    (``articles``: the already parsed ``read_articles(directory)``, to avoid parsing twice)."""
    directory = Path(directory)
    articles = read_articles(directory) if articles is None else articles
    all_ids = [a["id"] for a in articles]
    if split == "stratified":
        return _stratified(articles, seed)
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    path = directory / SPLITS
    if not path.is_file():
        raise DataError(f"{path} not found; use split='stratified' to draw folds without it")
    raw = json.loads(path.read_text())
    # The split file lists integer ids; the XML writes them zero-padded to 7 digits.
    by_int = {int(i): i for i in all_ids}
    paper = {name: [by_int[int(i)] for i in raw[name]] for name in ("train", "dev", "test")}
    if split == "paper":
        return paper
    test = paper["test"]
    dev = [i for i in paper["dev"] if i not in set(test)]
    used = set(test) | set(dev)
    train = [i for i in all_ids if i not in used]  # paper train minus leaks, plus the unused articles
    return {"train": train, "dev": dev, "test": test}


def _stratified(articles: list[dict[str, str]], seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    out: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for label in sorted({a["label"] for a in articles}):
        ids = [a["id"] for a in articles if a["label"] == label]
        rng.shuffle(ids)
        n_test = round(0.1 * len(ids))
        out["test"] += ids[:n_test]
        out["dev"] += ids[n_test : 2 * n_test]
        out["train"] += ids[2 * n_test :]
    return {k: sorted(v) for k, v in out.items()}


def load_splits(directory: str | Path, split: str, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """``{"train"|"dev"|"test": [{"id", "text", "label"}, ...]}`` for ``split``."""
    parsed = read_articles(directory)
    by_id = {a["id"]: a for a in parsed}
    return {name: [by_id[i] for i in ids] for name, ids in split_ids(directory, split, seed, parsed).items()}


def split_report(splits: dict[str, list[dict[str, str]]]) -> dict[str, dict[str, int]]:
    """Sizes and label counts per split, plus how many ids each pair of splits shares."""
    report: dict[str, dict[str, int]] = {}
    for name, rows in splits.items():
        counts = {"size": len(rows)}
        for row in rows:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
        report[name] = counts
    ids = {name: {r["id"] for r in rows} for name, rows in splits.items()}
    names = sorted(ids)
    report["overlap"] = {f"{a}&{b}": len(ids[a] & ids[b]) for a in names for b in names if a < b}
    return report


def export_jsonl(directory: str | Path, out_dir: str | Path, split: str, seed: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (``{"id", "text", "label"}`` per line)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in load_splits(directory, split, seed).items():
        path = out_dir / f"{name}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
        paths[name] = path
    return paths
