"""A 16,384-token encoder pass of a base-size LED (6 layers x 768) fits this 24 GB machine (slow: ~minutes)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_base_led_encoder_at_16384_tokens_fits_24_gb(tmp_path):
    pytest.importorskip("transformers")  # the worker draws the seeded weights with transformers' init
    spec = dict(layers=6, hidden=768, heads=12, ffn=3072, window=512, max_positions=16384, dtype="float32",
                repeats=1, threads=None, weights=str(tmp_path / "encoder.safetensors"))

    def worker(job):
        out = subprocess.run([sys.executable, "-m", "longformer.bench.led", json.dumps(job)], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    worker({**spec, "mode": "init"})
    result = worker({**spec, "mode": "time", "impl": "ours", "T": 16384})
    print(result)
    assert result["peak_gb"] < 24.0
