"""`longformer demo`: the main job end to end on a short generated document, plus its parts."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longformer.cli import main as cli_main
from longformer.demo import run as demo_run
from longformer.demo.document import TOPICS, generate_paragraphs


@pytest.fixture(scope="module")
def cache(minilm_dir: Path, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


def test_demo_finds_the_topic_and_reuses_the_cache(cache: Path, capsys):
    args = ["demo", "--cache-dir", str(cache), "--max-tokens", "600", "--no-compare"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "converted now" in out and "passages, read in one pass" in out
    top = next(line for line in out.splitlines() if line.strip().startswith("1. score"))
    assert "topic: beekeeping" in top  # the default query is about bees in winter
    query = "What warns scientists that magma is rising under the volcano?"
    assert cli_main(["demo", "--cache-dir", str(cache), "--max-tokens", "300", "--no-compare", "--query", query]) == 0
    out = capsys.readouterr().out
    assert "reused from the cache" in out
    top = next(line for line in out.splitlines() if line.strip().startswith("1. score"))
    assert "topic: volcanoes" in top


def test_demo_reads_a_file(cache: Path, tmp_path: Path, capsys):
    paragraphs = generate_paragraphs(seed=3, rounds=2)
    path = tmp_path / "notes.txt"
    path.write_text("\n\n  \n".join(p.text for p in paragraphs) + "\n")
    topic = paragraphs[1].topic  # well inside the first 400 tokens
    query = TOPICS[topic][0]  # the topic's heading, e.g. "Baking sourdough bread"
    args = ["demo", "--cache-dir", str(cache), "--file", str(path), "--query", query,
            "--max-length", "4096", "--max-tokens", "400", "--no-compare", "--top", "2"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert f"document : {path}:" in out and "as --max-tokens asks" in out
    top = next(line for line in out.splitlines() if line.strip().startswith("1. score"))
    texts = [p.text for p in paragraphs if p.topic == topic]
    shown = out.split(top, 1)[1].split("\n")[1].strip()[:40]
    assert any(shown in " ".join(t.split()) for t in texts)


def test_segments_cut_at_passage_borders():
    doc = demo_run.Document("x", list(range(50)), 50, [demo_run.Passage(a, a + 10, "", None) for a in range(0, 50, 10)])
    assert demo_run.segments(doc, 25) == [(0, 20), (20, 40), (40, 50)]
    assert demo_run.segments(doc, 50) == [(0, 50)]


def test_paragraph_spans():
    text = "  first para\nstill first\n\n\n second \n \n\nthird"
    spans = demo_run.paragraph_spans(text)
    assert [text[a:b] for a, b in spans] == ["first para\nstill first", "second", "third"]


def test_missing_package_says_how_to_install(monkeypatch):
    real = demo_run.importlib.util.find_spec
    monkeypatch.setattr(demo_run.importlib.util, "find_spec", lambda name: None if name == demo_run.MINILM_PACKAGE else real(name))
    with pytest.raises(demo_run.DemoError, match=r'pip install -e "\.\[demo\]"'):
        demo_run.minilm_dir()


def test_bad_options_are_named(cache: Path, capsys):
    assert cli_main(["demo", "--cache-dir", str(cache), "--file", "/nonexistent/x.txt"]) == 2
    assert "--file '/nonexistent/x.txt' is not a file" in capsys.readouterr().out
    assert cli_main(["demo", "--cache-dir", str(cache), "--top", "0"]) == 2
    assert "--top must be >= 1, got 0" in capsys.readouterr().out


def test_generated_document_is_deterministic():
    a, b = generate_paragraphs(seed=0), generate_paragraphs(seed=0)
    assert a == b and {p.topic for p in a} == set(TOPICS)


def test_dense_comparison_model_equals_the_long_model(cache: Path, minilm_dir: Path, tmp_path: Path):
    # The "full attention" row of the comparison must be the same network: with an input the window
    # covers, BertModel rebuilt from the long model's weights gives the long model's output.
    from longformer.demo.measure import build, measure
    from longformer.encoder import LongformerModel

    model_dir, _ = demo_run.long_model(minilm_dir, cache, 4096, 128)
    ids = torch.randint(1000, 20000, (100,), generator=torch.Generator().manual_seed(0))
    ids[0], ids[-1] = 101, 102
    torch.save(ids, tmp_path / "ids.pt")
    spec = {"model_dir": str(model_dir), "source_dir": str(minilm_dir), "ids_path": str(tmp_path / "ids.pt"),
            "cls_id": 101, "sep_id": 102, "pad_id": 0, "chunk_tokens": 64, "warmup": 0, "repeats": 1}
    dense, inputs = build("dense", spec)
    ours = LongformerModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        assert (dense(**inputs).last_hidden_state - ours(ids[None]).last_hidden_state).abs().max() <= 1e-4
    result = measure({**spec, "kind": "chunks"})
    assert result["shape"] == [2, 64] and result["seconds"] > 0 and result["peak_mb"] >= result["rss_before_mb"]


@pytest.mark.slow
def test_default_demo_with_comparison(cache: Path, capsys):
    # The whole main job as a user runs it (the ~4,000-token document, three measured models).
    assert cli_main(["demo", "--cache-dir", str(cache), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "read in one pass" in out
    top = next(line for line in out.splitlines() if line.strip().startswith("1. score"))
    assert "topic: beekeeping" in top
    for row in ("long MiniLM, window w=128", "same weights, full attention", "original MiniLM on 8 chunks"):
        assert row in out
