"""kill -9 at random moments of a real train-lm run (a save every step, so many kills land inside
one), resuming each time: every resume works, the run ends at its last step with the weights of an
uninterrupted run, and no temp file is left after the next start."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fault_helpers import kill_repeatedly, leftovers

from lm_helpers import micro_preset

from longformer.lm.checkpoint import load_state
from longformer.lm.train import RunOptions, train

REPO = Path(__file__).resolve().parents[2]


def _preset(steps: int):  # noqa: ANN202
    preset = micro_preset(steps=steps, save_every=1, eval_every=max(1, steps // 3), log_every=1)
    preset.model = replace(preset.model, attn_impl="auto")  # what the command uses by default
    return preset


def _run_faults(text_file: Path, tmp_path: Path, steps: int, kills: int, seed: int,
                delays: tuple[float, float]) -> None:
    script = tmp_path / "train_lm.py"
    script.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]\n"
        "from test_lm_faults import _preset\n"
        "from longformer.lm.config import PRESETS\n"
        f"PRESETS['micro-fault'] = lambda: _preset({steps})\n"
        "from longformer.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "killed"
    argv = [str(script), "train-lm", "--data", str(text_file), "--preset", "micro-fault", "--out", str(out),
            "--no-progress"]

    def check() -> None:
        if (out / "last").exists() or (out / ".last.old").exists():
            assert 0 < load_state(out)["step"] <= steps  # loads: no truncated or half-swapped state

    hits = kill_repeatedly(argv, env, kills=kills, seed=seed, delays=delays, check=check,
                           log=tmp_path / "stderr.log")
    assert hits >= 1
    assert leftovers(out) == [], leftovers(out)
    # the uninterrupted run, in this process (same code, one thread, same numbers)
    train(_preset(steps), RunOptions(data=text_file, out=tmp_path / "straight", vocab="bytes", progress=False,
                                     preset_name="micro-fault"))
    a, b = load_state(tmp_path / "straight"), load_state(out)
    assert a["step"] == b["step"] == steps
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    logged = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert logged == list(range(1, steps + 1))  # every step logged once, none lost or doubled


def test_kill_and_resume_twice(text_file: Path, tmp_path: Path) -> None:
    _run_faults(text_file, tmp_path, steps=80, kills=2, seed=0, delays=(2.0, 4.0))


@pytest.mark.slow
def test_kill_and_resume_twelve_times(text_file: Path, tmp_path: Path) -> None:
    _run_faults(text_file, tmp_path, steps=60, kills=12, seed=1, delays=(1.0, 6.0))
