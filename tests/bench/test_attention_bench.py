"""Smoke test of `longformer bench attention` at tiny sizes: it runs, reports and writes JSON/plot."""
import json

import pytest

from longformer.bench import attention as bench
from longformer.bench import _attention_cases as cases


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


@pytest.mark.parametrize("causal", [False, True])
def test_flex_block_mask_matches_the_pattern(causal):
    """The directly built BlockMask lists every key block that holds an allowed pair."""

    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    T, w, g, block = 300, 20, 2, 128
    allowed = lambda i, j: (abs(i - j) <= w or i < g or j < g) and (not causal or j <= i)
    bm = cases._band_block_mask(flex.BlockMask, T, w, g, causal, block, None)
    num, idx = bm.kv_num_blocks[0, 0], bm.kv_indices[0, 0]
    for qb in range(num.numel()):
        listed = set(idx[qb, : num[qb]].tolist())
        for kb in range(num.numel()):
            needed = any(allowed(i, j) for i in range(qb * block, min(T, (qb + 1) * block))
                         for j in range(kb * block, min(T, (kb + 1) * block)))
            assert not needed or kb in listed, (qb, kb)
