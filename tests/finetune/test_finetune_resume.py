"""finetune --resume: changed arguments are refused with every difference, --extend, finished runs,
a crash between the two renames of a save; one-line CLI errors; the task registry."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from finetune_helpers import classification_rows, write_jsonl

from longformer.cli import main


def _one_error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"longformer {command}: error: "), err
    return err[0]


def _files(tmp_path: Path) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "train.jsonl", classification_rows(8, seed=0)),
            write_jsonl(tmp_path / "dev.jsonl", classification_rows(4, seed=1)))


def _args(model: Path, train: Path, dev: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--task", "classification", "--model", str(model), "--train", str(train),
            "--validation", str(dev), "--out", str(out), "--batch-size", "4", "--lr", "3e-3", "--no-progress",
            "--epochs", "1", *extra]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_changed_arguments_finished_runs_and_extend(tiny_model_dir: Path, tmp_path: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from longformer.training.optim import LRSchedule

    rates: dict[int, float] = {}
    real_set = LRSchedule.set

    def record(self, step: int) -> float:  # noqa: ANN001
        rates[step] = real_set(self, step)
        return rates[step]

    monkeypatch.setattr(LRSchedule, "set", record)
    train, dev = _files(tmp_path)
    out = tmp_path / "out"
    assert main(_args(tiny_model_dir, train, dev, out)) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["steps"] == 2 and json.loads((out / "last" / "run.json").read_text())["finished"]
    capsys.readouterr()

    other = write_jsonl(tmp_path / "other.jsonl", classification_rows(8, seed=5))
    assert main(_args(tiny_model_dir, other, dev, out, "--lr", "1e-2", "--epochs", "5", "--resume")) == 2
    line = _one_error_line(capsys, "finetune")
    for diff in ("--train: ", "other.jsonl", "--lr: 0.003 -> 0.01", "--epochs: 1 -> 5 (pass --extend"):
        assert diff in line, (diff, line)

    assert main(_args(tiny_model_dir, train, dev, out, "--resume")) == 0
    assert "already finished at step 2; pass --extend with more --epochs" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == first  # nothing was retrained

    assert rates == pytest.approx({0: 3e-3, 1: 1.5e-3})  # warmup int(0.1 * 2) = 0, decay to 0 at step 2
    assert main(_args(tiny_model_dir, train, dev, out, "--resume", "--extend", "--epochs", "2")) == 0
    # the steps still to run follow the schedule of the new total (4 steps): 3e-3 * (4 - s) / 4
    assert rates == pytest.approx({0: 3e-3, 1: 1.5e-3, 2: 1.5e-3, 3: 0.75e-3})
    extended = json.loads((out / "metrics.json").read_text())
    assert extended["steps"] == 4 and extended["epochs_run"] == 2
    assert extended["history"][0] == first["history"][0]  # the first epoch is the run's own
    # killed after the last save but before metrics.json: the resume only writes the report
    (out / "metrics.json").unlink()
    assert main(_args(tiny_model_dir, train, dev, out, "--resume", "--epochs", "2")) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["history"] == extended["history"] and again["steps"] == 4 and again.get("test") == extended.get("test")


def test_killed_run_resumes_from_last_old(tiny_model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from longformer.finetune.tasks import TASKS

    train, dev = _files(tmp_path)
    args = ("--epochs", "2", "--seed", "3", "--save-every", "1")
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "full", *args)) == 0
    task = TASKS["classification"]
    real, calls = task.loss_sum, {"n": 0}

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(task, "loss_sum", crash_on_third)
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "cut", *args)) == 130
    monkeypatch.undo()
    cut = tmp_path / "cut"
    os.replace(cut / "last", cut / ".last.old")  # a death between the two renames of a save
    assert main(_args(tiny_model_dir, train, dev, cut, *args, "--resume")) == 0
    full_w, cut_w = _weights(tmp_path / "full" / "last"), _weights(cut / "last")
    for name in full_w:
        torch.testing.assert_close(cut_w[name], full_w[name], rtol=1e-5, atol=1e-6)
    assert json.loads((cut / "metrics.json").read_text())["history"] == \
        json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]


def test_cli_mistakes_are_one_error_line(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    train, dev = _files(tmp_path)
    out = tmp_path / "out"
    assert main(_args(tiny_model_dir, train, dev, out, "--max-steps", "1")) == 0
    capsys.readouterr()
    assert main(_args(tiny_model_dir, train, dev, out, "--max-steps", "1")) == 2
    assert "already holds a run" in _one_error_line(capsys, "finetune")

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(_args(tiny_model_dir, empty, dev, tmp_path / "o1")) == 2
    assert "empty.jsonl is empty" in _one_error_line(capsys, "finetune")
    assert main(_args(tiny_model_dir, tmp_path / "missing.jsonl", dev, tmp_path / "o2")) == 2
    assert "does not exist" in _one_error_line(capsys, "finetune")
    bad_task = _args(tiny_model_dir, train, dev, tmp_path / "o3")
    bad_task[bad_task.index("classification")] = "summarization"
    assert main(bad_task) == 2
    assert ("unknown task 'summarization'; registered tasks: classification, qa, token-classification"
            in _one_error_line(capsys, "finetune"))
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "o4", "--lr", "-1", "--warmup-ratio", "2")) == 2
    line = _one_error_line(capsys, "finetune")
    assert "--lr must be > 0, got -1.0" in line and "--warmup-ratio must be in [0, 1)" in line
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "o5", "--extend")) == 2
    assert "--extend continues an existing run" in _one_error_line(capsys, "finetune")
    assert main(_args(tmp_path / "no-model", train, dev, tmp_path / "o6")) == 2
    assert "no-model" in _one_error_line(capsys, "finetune")

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"hidden_size": 32,')
    assert main(_args(broken, train, dev, tmp_path / "o7")) == 2
    assert "config.json is not valid JSON" in _one_error_line(capsys, "finetune")

    state = out / "last" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert main(_args(tiny_model_dir, train, dev, out, "--max-steps", "1", "--resume")) == 2
    assert "trainer_state.pt is corrupt or truncated" in _one_error_line(capsys, "finetune")

    assert main(["predict", "--model", str(tiny_model_dir), "--input", str(dev), "--output", str(tmp_path / "p")]) == 2
    assert "has no finetune.json" in _one_error_line(capsys, "predict")
    assert main(["predict", "--model", str(tmp_path / "gone"), "--input", str(dev), "--output", str(tmp_path / "p")]) == 2
    assert "gone" in _one_error_line(capsys, "predict")
    (out / "best" / "finetune.json").write_text("{not json")
    assert main(["predict", "--model", str(out / "best"), "--input", str(dev), "--output", str(tmp_path / "p")]) == 2
    assert "finetune.json is not valid JSON" in _one_error_line(capsys, "predict")


def test_registry_has_one_object_per_task() -> None:
    from longformer.encoder import (LongformerForQuestionAnswering, LongformerForSequenceClassification,
                                    LongformerForTokenClassification)
    from longformer.finetune.data import DataError
    from longformer.finetune.tasks import TASKS, get_task, model_class

    assert list(TASKS) == ["classification", "qa", "token-classification"]
    assert [model_class(t) for t in TASKS.values()] == [LongformerForSequenceClassification,
                                                        LongformerForQuestionAnswering, LongformerForTokenClassification]
    with pytest.raises(DataError, match="registered tasks: classification, qa, token-classification"):
        get_task("QA")
