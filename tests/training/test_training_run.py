"""The run directory: crash-safe saves, recovery, stale temps, and the resume rule."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longformer.errors import CheckpointFileError, ResumeError
from longformer.training import (LRSchedule, RunDir, RunExistsError, RunSpec, adamw, differences, fingerprint,
                                 linear_warmup_decay)


def _spec(**over) -> RunSpec:
    args = {"--lr": 3e-5, "--seed": 1, "--betas": (0.9, 0.98), "model": {"layers": 2, "dims": [4, 4]}}
    args.update(over.pop("args", {}))
    return RunSpec("test", args, over.pop("schedule", {"--steps": 10}), "--extend --steps M")


def _save(run: RunDir, step: int, finished: bool = False) -> None:
    run.save({"step": step, "w": torch.arange(3)}, step=step, finished=finished,
             write_files=lambda d: (d / "weights.txt").write_text(str(step)))


def test_new_run_save_and_resume(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "out", _spec())
    assert run.start(resume=False) is None
    _save(run, 4)
    stored = json.loads((run.last / "run.json").read_text())
    assert stored["step"] == 4 and stored["args"]["--betas"] == [0.9, 0.98] and not stored["finished"]
    with pytest.raises(RunExistsError, match="--resume"):
        RunDir(tmp_path / "out", _spec()).start(resume=False)
    resumed = RunDir(tmp_path / "out", _spec()).start(resume=True)
    assert resumed.step == 4 and torch.equal(resumed.state["w"], torch.arange(3)) and not resumed.extended
    assert (resumed.directory / "weights.txt").read_text() == "4"


def test_resume_lists_every_difference(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "out", _spec())
    run.start(resume=False)
    _save(run, 2)
    changed = _spec(args={"--lr": 0.01, "model": {"layers": 3, "dims": [4, 4]}, "--new": True})
    with pytest.raises(ResumeError) as err:
        RunDir(tmp_path / "out", changed).start(resume=True)
    text = str(err.value)
    assert "--lr: 3e-05 -> 0.01" in text and "model.layers: 2 -> 3" in text and "--new: (none) -> true" in text
    assert "--seed" not in text


def test_schedule_grows_only_with_extend(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "out", _spec())
    run.start(resume=False)
    _save(run, 10, finished=True)
    resumed = RunDir(tmp_path / "out", _spec()).start(resume=True)
    assert resumed.finished
    message = str(RunDir(tmp_path / "out", _spec()).finished_error(resumed))
    assert "already finished at step 10" in message and "--extend --steps M" in message
    with pytest.raises(ResumeError, match=r"--steps: 10 -> 20 \(pass --extend"):
        RunDir(tmp_path / "out", _spec(schedule={"--steps": 20})).start(resume=True)
    with pytest.raises(ResumeError, match="cannot be shortened"):
        RunDir(tmp_path / "out", _spec(schedule={"--steps": 5})).start(resume=True, extend=True)
    longer = RunDir(tmp_path / "out", _spec(schedule={"--steps": 20})).start(resume=True, extend=True)
    assert longer.extended and not longer.finished
    # None means unlimited: from a limit to none is longer, the other way shorter
    assert "cannot be shortened" in _resume_error(tmp_path, {"--steps": 10, "--max": None}, {"--steps": 10, "--max": 3})


def _resume_error(tmp_path: Path, first: dict, second: dict) -> str:
    out = tmp_path / "sched"
    RunDir(out, _spec(schedule=first)).save({}, step=1, finished=False)
    with pytest.raises(ResumeError) as err:
        RunDir(out, _spec(schedule=second)).start(resume=True, extend=True)
    return str(err.value)


def test_data_fingerprints_compare_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello")
    b.write_text("hello")
    assert differences({"--data": fingerprint(a)}, {"--data": fingerprint(b)}) == []  # moved file: same data
    b.write_text("hellO")
    (diff,) = differences({"--data": fingerprint(a)}, {"--data": fingerprint(b)})
    assert diff.startswith("--data: ") and "a.txt (5 bytes" in diff and "b.txt (5 bytes" in diff
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x").write_text("1")
    before = fingerprint(d)
    (d / "x").write_text("2")
    assert differences({"m": before}, {"m": fingerprint(d)})


def test_recovers_last_old_and_cleans_stale_temps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = RunDir(out, _spec())
    _save(run, 3)
    # a death between replace_dir's two renames: only .last.old is left
    os.replace(out / "last", out / ".last.old")
    # temps of a dead writer: a staging dir and a file
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / f".last.{pid}.abc.tmpdir").mkdir()
    (out / f".curve.png.{pid}.abc.tmp").write_bytes(b"x")
    resumed = RunDir(out, _spec()).start(resume=True)
    assert resumed.step == 3 and (out / "last").is_dir() and not (out / ".last.old").exists()
    assert sorted(p.name for p in out.iterdir()) == ["last"]


def test_corrupt_state_names_the_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "out", _spec())
    _save(run, 3)
    state = run.last / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(CheckpointFileError, match="trainer_state.pt is corrupt or truncated"):
        RunDir(tmp_path / "out", _spec()).start(resume=True)


def test_old_layout_without_run_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out" / "last").mkdir(parents=True)
    torch.save({}, tmp_path / "out" / "last" / "trainer_state.pt")
    with pytest.raises(ResumeError, match="older version"):
        RunDir(tmp_path / "out", _spec()).start(resume=True)


def test_nothing_to_resume_starts_fresh_and_says_so(tmp_path: Path) -> None:
    said = []
    assert RunDir(tmp_path / "out", _spec()).start(resume=True, log=said.append) is None
    assert "nothing to resume" in said[0]


def test_adamw_split_and_schedule() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model[0].bias.requires_grad_(False)
    opt = adamw(model, lr=0.1, weight_decay=0.5)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.5 and [p.shape for p in decay["params"]] == [(4, 3)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2  # LayerNorm weight, bias
    schedule = LRSchedule(opt, lambda s: linear_warmup_decay(s, 2, 6))
    rates = [schedule.set(s) for s in range(7)]
    assert rates == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.075, 0.05, 0.025, 0.0])
    # same as torch's LambdaLR with the same function (what the loops used before)
    ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lam = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: linear_warmup_decay(s, 2, 6))
    expected = []
    for _ in range(7):
        expected.append(ref.param_groups[0]["lr"])
        ref.step()
        lam.step()
    assert rates == expected


def test_user_errors_are_reported_by_rank_0_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from longformer.errors import LongformerError
    from longformer.training import report_on_rank0

    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_info, report_on_rank0():
        raise LongformerError("bad --lr")
    assert exit_info.value.code == 2
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(LongformerError, match="bad --lr"), report_on_rank0():
        raise LongformerError("bad --lr")
    with pytest.raises(KeyError), report_on_rank0():  # bugs keep their traceback on every rank
        raise KeyError("x")
