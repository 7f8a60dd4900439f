"""kill -9 at random moments of a real finetune run (OUT/last saved every step, OUT/best and
metrics.json too), resuming each time: every resume works, the run ends at its last step with the
weights of an uninterrupted run, and no temp file is left after the next start."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from finetune_helpers import classification_rows, write_jsonl
from fault_helpers import kill_repeatedly, leftovers

from longformer.cli import main

REPO = Path(__file__).resolve().parents[2]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.mark.slow
def test_kill_and_resume_ten_times(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", classification_rows(48, seed=0))
    dev = write_jsonl(tmp_path / "dev.jsonl", classification_rows(8, seed=1))
    args = ["finetune", "--task", "classification", "--model", str(tiny_model_dir), "--train", str(train),
            "--validation", str(dev), "--batch-size", "4", "--epochs", "3", "--save-every", "1", "--seed", "3",
            "--lr", "3e-3", "--no-progress"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}

    def check() -> None:
        from longformer._files import read_torch

        # the resume point loads, weights included (.last.old: a kill between the two renames of a save)
        for last in (out / "last", out / ".last.old"):
            if last.exists():
                assert _weights(last) and read_torch(last / "trainer_state.pt", "training state")["state"]
                json.loads((last / "run.json").read_text())
                break

    hits = kill_repeatedly(["-m", "longformer", *args, "--out", str(out)], env, kills=10, seed=2,
                           delays=(3.0, 9.0), check=check, log=tmp_path / "stderr.log")
    assert hits >= 1
    assert leftovers(out) == [], leftovers(out)
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "killed"))
    assert a["steps"] == b["steps"] == 36 and a["history"] == b["history"] and a["best"] == b["best"]
    full, cut = _weights(tmp_path / "straight" / "last"), _weights(out / "last")
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=1e-5, atol=1e-6)
