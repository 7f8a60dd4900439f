"""`torchrun` (2 CPU processes, gloo) makes the same update as one process on the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import classification_rows, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def token_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        tokens = ["alpha", "paris", "is", "big", "rome", "beta", "city"][: 3 + i % 5]
        tags = ["B-LOC" if t in ("paris", "rome") else "O" for t in tokens]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("task", ["classification", "token-classification"])
def test_two_processes_match_one(task: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    # classification puts global attention on [CLS]; token classification has no global token at all,
    # so the global projections get no gradient in any process (DDP must still agree).
    rows = classification_rows(8, seed=3) if task == "classification" else token_rows(8)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    common = ["finetune", "--task", task, "--model", str(tiny_model_dir), "--train", str(train),
              "--validation", str(train), "--epochs", "1", "--max-steps", "1", "--lr", "0.01",
              "--warmup-ratio", "0", "--seed", "5", "--no-progress"]
    # The real entry point (`torchrun -m longformer finetune`) for one case, this package's alone for the other.
    module = "longformer" if task == "classification" else "longformer.finetune"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", module, *common, "--batch-size", "2", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=120)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from longformer.finetune.__main__ import main

    assert main([*common, "--batch-size", "4", "--out", str(tmp_path / "single")]) == 0

    before = _weights(tiny_model_dir)
    one, two = _weights(tmp_path / "single" / "last"), _weights(tmp_path / "ddp" / "last")
    assert one.keys() == two.keys()
    moved = 0
    # Adam's first step is about lr * sign(grad): atol = 0.1% of lr absorbs float summation order.
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        if name in before and before[name].shape == one[name].shape:
            moved += int(not torch.equal(before[name], one[name]))
    assert moved > len(one) // 2  # the step really changed the weights
    metrics = (tmp_path / "ddp" / "metrics.json").read_text()
    assert '"world_size": 2' in metrics and '"accuracy"' in metrics
