"""`longformer bench export` at tiny sizes: it runs every implementation on the same weights, warms each
up the same number of times, and reports the warm-up runs it did not time."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from longformer.cli import main as cli_main  # noqa: E402

TINY = ["--layers", "1", "--lengths", "64,128", "--window", "8", "--hidden", "32", "--heads", "2",
        "--intermediate", "64", "--repeats", "2", "--warmup", "2"]


def test_runs_all_implementations_with_the_same_warmup(tmp_path: Path, capsys):
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "export", *TINY, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["warmup"] == 2
    assert all(d <= 1e-4 for d in report["max_abs_diff_vs_ours"].values())  # same weights, same math
    for T in ("64", "128"):
        for impl, r in report["results"][T].items():
            assert len(r["all_seconds"]) == 4, impl  # 2 warm-up + 2 timed
            assert r["seconds"] == pytest.approx(statistics.median(r["all_seconds"][2:]))
    text = capsys.readouterr().out
    assert "after 2 warm-up run(s)" in text and "T=64 warm-up runs (s): onnxruntime " in text


def test_rejects_negative_warmup(capsys):
    assert cli_main(["bench", "export", *TINY[:-2], "--warmup", "-1"]) == 2
    assert "--warmup >= 0" in capsys.readouterr().err


def test_a_failing_worker_is_reported_with_its_error(tmp_path: Path):
    from longformer.bench.workers import run_interleaved

    spec = {"impl": "onnxruntime", "length": 8, "model_dir": str(tmp_path), "onnx": str(tmp_path / "missing.onnx"),
            "global_tokens": 1, "output_path": None}
    with pytest.raises(RuntimeError, match=r"(?s)bench worker T=8 onnxruntime failed .*missing\.onnx"):
        run_interleaved("longformer.bench.export", {"onnxruntime": spec}, runs=1, warmup=0, tmp=tmp_path, label="T=8 ")
