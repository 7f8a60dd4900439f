"""Smoke test of `longformer bench attention` at tiny sizes: it runs, reports and writes JSON/plot."""
import json

import pytest

from longformer.bench import attention as bench


def test_bench_attention_tiny(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    args = parser.parse_args(
        ["--lengths", "64", "256", "--window", "16", "--heads", "2", "--head-dim", "8", "--repeats", "1",
         "--impls", "blocked", "--json", str(out_json), "--plot", str(out_png)]
    )
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    assert "useful forward rate" in text and "T=256 / T=64" in text and "in one process, interleaved" in text
    report = json.loads(out_json.read_text())
    pair = report["growth_interleaved"]["blocked"]
    assert len(pair) == 2 and all(r["fb_ms"] > 0 for r in pair)
    rows = {(r["impl"], r["T"]): r for r in report["results"]}
    assert set(rows) == {("blocked", 64), ("blocked", 256)}
    for r in rows.values():
        assert "error" not in r, r
        assert r["fwd_ms"] > 0 and r["fb_ms"] > 0 and r["fb_mb"] >= 0
    assert out_png.stat().st_size > 0


def test_bench_variants_tiny(tmp_path, capsys):
    """--variants: every pattern row, timed in one subprocess; the plain row is the unit, and
    --causal/--globals on the command line do not leak into the rows."""
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out_json = tmp_path / "v.json"
    args = parser.parse_args(
        ["--variants", "--lengths", "200", "--window", "8", "--heads", "4", "--head-dim", "8", "--repeats", "1",
         "--impls", "blocked", "--causal", "--globals", "3", "--json", str(out_json)]
    )
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    names = [name for name, _, _ in bench._variants(4, "float32")]
    assert all(name in text for name in names) and "dilation 2,3,4,4" in text
    rows = json.loads(out_json.read_text())["variants"]
    assert [r["variant"] for r in rows] == names
    for r in rows:
        assert "error" not in r, r
        assert r["fwd_ms"] > 0 and r["fb_ms"] > 0
    patterns = {name: change for name, change, _ in bench._variants(4, "float32")}
    assert patterns["plain window"] == {"globals": 0, "dilation": [1], "causal": False}
    # the bf16 row is compared with its fp32 twin, and its error against fp32 on the same inputs is
    # about bf16's rounding (blocked computes in bf16 here, so a few roundings)
    bf16 = rows[names.index("bf16, 1 global token")]
    assert bf16["vs"] == "1 global token" and 0 < bf16["rel_err"] < 0.05
    assert all(r["rel_err"] is None for r in rows if r is not bf16)
    assert "bf16" not in " ".join(name for name, _, _ in bench._variants(4, "bfloat16"))


def test_bench_rejects_bad_arguments():
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ValueError, match="--impls"):
        bench.run(parser.parse_args(["--impls", "nope", "--lengths", "8"]))
    with pytest.raises(ValueError, match="--dilation"):
        bench.run(parser.parse_args(["--dilation", "1,2", "--lengths", "8"]))


@pytest.mark.parametrize("bad", [["--dilation", "x"], ["--dilation", "0"], ["--impls", "nope"], ["--repeats", "0"]])
def test_cli_bad_arguments_are_one_line(bad, capsys):
    from longformer.cli import main

    assert main(["bench", "attention", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longformer bench: error: --"), err


def test_bench_flex_row_and_device_choice(tmp_path):
    """impl="flex" is a row like any library implementation (eager on the CPU, no compile time), and
    --device cuda says clearly when there is no GPU."""
    import argparse

    import torch

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--lengths", "64", "--window", "8", "--heads", "2", "--head-dim", "8", "--repeats", "1",
                              "--impls", "flex", "--dilation", "1,2", "--json", str(tmp_path / "r.json")])
    assert bench.run(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    row = report["results"][0]
    assert row["impl"] == "flex" and "error" not in row and row["fwd_ms"] > 0 and row["fb_ms"] > 0
    assert "compile_s" not in row and "eager" in row["note"]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda"):
            bench.run(parser.parse_args(["--device", "cuda", "--lengths", "64"]))
