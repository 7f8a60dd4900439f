"""`longformer bench led` at tiny sizes, in process: the accelerate row sees the same weights, and the
generate mode gives the same tokens in all three implementations."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from longformer.bench import led as bench_led  # noqa: E402

TINY = dict(layers=2, hidden=32, heads=2, ffn=48, window=8, max_positions=1024, dtype="float32", repeats=1,
            threads=None, beams=2)


def test_encoder_check_covers_accelerate(tmp_path):
    job = {**TINY, "generate": 0, "weights": str(tmp_path / "encoder.safetensors")}
    bench_led._main({**job, "mode": "init"})
    check = bench_led._main({**job, "mode": "check", "T": 45, "impls": list(bench_led.IMPLS)})
    assert check["max_abs_diff"] <= 1e-4
    timed = bench_led._main({**job, "mode": "time", "impl": bench_led.ACCELERATED, "T": 45})
    assert timed["seconds"] > 0


def test_generate_mode_same_tokens(tmp_path):
    job = {**TINY, "generate": 4, "weights": str(tmp_path / "led")}
    bench_led._main({**job, "mode": "init"})
    runs = [bench_led._main({**job, "mode": "time", "impl": impl, "T": 37}) for impl in bench_led.IMPLS]
    assert all(len(r["tokens"][0]) == 5 for r in runs)  # the start token + exactly 4 new ones
    assert runs[0]["tokens"] == runs[1]["tokens"] == runs[2]["tokens"]
