"""`torchrun` (2 CPU processes, gloo) makes the same updates as one process on the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from pretrain_helpers import build_model_dir
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def test_two_processes_match_one(corpus_files, tmp_path: Path) -> None:
    model = build_model_dir(tmp_path / "enc", dropout=0.0)  # dropout streams differ per process by design
    common = ["pretrain-mlm", "--model", str(model), "--train", str(corpus_files[0]), "--validation",
              str(corpus_files[1]), "--max-length", "24", "--steps", "2", "--lr", "0.01", "--seed", "3",
              "--eval-every", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "longformer",
         *common, "--batch-size", "2", "--grad-accum", "2", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from longformer.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*common, "--batch-size", "2", "--grad-accum", "4", "--out", str(tmp_path / "one")]) == 0
    one, two = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("one", "ddp"))
    before = load_file(str(model / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    # a bare-encoder checkpoint (its pooler is not part of the MLM model)
    moved = [k for k in before if "longformer." + k in one and not torch.equal(before[k], one["longformer." + k])]
    assert len(moved) > len(before) // 2
    runs = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "ddp")]
    assert runs[1]["processes"] == 2 and runs[0]["processes"] == 1
    v1, v2 = (r["history"][-1]["validation"] for r in runs)
    assert v1["masked_tokens"] == v2["masked_tokens"] and abs(v1["bpc"] - v2["bpc"]) < 1e-4
    t1, t2 = ([h["train_bpc"] for h in r["history"][1:]] for r in runs)
    assert all(abs(a - b) < 1e-4 for a, b in zip(t1, t2))
