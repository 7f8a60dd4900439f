"""The acceptance check on real data: the `tiny` preset through the CLI on the enwik8 prefix.

Slow (several minutes on 2 cores): run with `pytest -m slow tests/lm/test_enwik8_slow.py`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from longformer.cli import main
from longformer.lm.data import SymbolStream


@pytest.mark.slow
def test_tiny_preset_on_enwik8_prefix(shared_data: Path, tmp_path: Path, capsys):
    data = shared_data / "enwik8" / "enwik8.prefix"
    out = tmp_path / "tiny"
    assert main(["train-lm", "--data", str(data), "--preset", "tiny", "--out", str(out), "--steps", "200",
                 "--no-progress"]) == 0
    test = np.asarray(SymbolStream(data, "test", "bytes").data)
    p = np.bincount(test, minlength=256) / len(test)
    unigram = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    bpc = {}
    for n in (512, 2048):
        capsys.readouterr()
        assert main(["eval-lm", "--checkpoint", str(out), "--data", str(data), "--split", "test",
                     "--seq-len", str(n), "--max-symbols", "50000", "--json"]) == 0
        bpc[n] = json.loads(capsys.readouterr().out)["bpc"]
    assert bpc[512] < unigram - 0.5, (bpc, unigram)
    assert bpc[2048] <= 1.05 * bpc[512], bpc
    assert math.isfinite(bpc[2048])
    assert main(["generate", "--checkpoint", str(out), "--prompt", "The ", "--max-new-tokens", "50"]) == 0
