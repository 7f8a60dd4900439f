"""`longformer bench model` at tiny sizes: it runs, both models see the same weights, JSON is complete."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from longformer.bench import model as bench_model  # noqa: E402
from longformer.cli import main as cli_main  # noqa: E402

TINY = ["--layers", "2", "--length", "150", "--window", "16", "--hidden", "32", "--heads", "2", "--intermediate", "64",
        "--repeats", "1"]


def test_forward_fp32_one_process_per_row_interleaved(tmp_path: Path, capsys):
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "model", *TINY, "--modes", "forward-fp32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["max_abs_diff_fp32_output"] <= 1e-4  # same weights, same math
    assert report["max_abs_diff_fp32_accelerate"] <= 1e-4
    row = report["results"]["forward-fp32"]
    for impl in ("transformers", "transformers+accelerate", "ours"):
        assert row[impl]["seconds"] > 0 and row[impl]["peak_mb"] >= row[impl]["rss_before_mb"]
        assert len(row[impl]["all_seconds"]) == 2  # a warm-up, then --repeats 1
    assert row["speedup"] == pytest.approx(row["transformers"]["seconds"] / row["ours"]["seconds"])
    assert row["accelerate_speedup"] == pytest.approx(row["transformers"]["seconds"]
                                                      / row["transformers+accelerate"]["seconds"])
    assert "same weights check" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["forward-bf16", "train-fp32", "train-bf16"])
@pytest.mark.parametrize("impl", ["ours", "transformers", "transformers+accelerate"])
def test_worker_modes(tmp_path: Path, mode: str, impl: str):
    parser = argparse.ArgumentParser()
    bench_model.add_arguments(parser)
    args = parser.parse_args(TINY)
    bench_model.make_checkpoint(tmp_path / "model", args)
    spec = {"model_dir": str(tmp_path / "model"), "length": 150, "batch": 2, "vocab": 50265, "global_tokens": 1,
            "repeats": 1, "threads": None, "mode": mode, "impl": impl, "output_path": str(tmp_path / "out.pt")}
    bench = bench_model._prepare(spec)  # what the worker process runs, here in-process
    out = bench.step()
    assert not out.requires_grad  # training: detached after its backward; forward: inference mode
    bench.save(out, spec["output_path"])
    saved = torch.load(spec["output_path"], weights_only=True)
    assert saved.dtype == torch.float32 and saved.shape == (2, 150, 32)


def test_bad_modes_are_named(capsys):
    assert cli_main(["bench", "model", "--modes", "forward-fp64"]) == 2
    assert "--modes must be a comma-separated subset" in capsys.readouterr().out
