"""train-lm --resume: changed arguments are refused with every difference, --extend, finished runs,
a crash between the two renames of a save, and one-line CLI errors for ordinary mistakes."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lm_helpers import micro_preset, synthetic_text

from longformer.cli import main
from longformer.lm.checkpoint import load_state
from longformer.lm.config import PRESETS
from longformer.lm.train import RunOptions, train
from longformer.training import RunFinished


def _opts(text_file: Path, out: Path, **kw) -> RunOptions:
    return RunOptions(data=text_file, out=out, vocab="bytes", progress=False, **kw)


def _one_error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"longformer {command}: error: "), err
    return err[0]


@pytest.fixture
def presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, "micro-test", lambda: micro_preset(steps=8))
    monkeypatch.setitem(PRESETS, "micro-other", lambda: micro_preset(steps=8, seq_len=16))


def _cli(text_file: Path, out: Path, *extra: str) -> list[str]:
    return ["train-lm", "--data", str(text_file), "--preset", "micro-test", "--out", str(out), "--attn-impl",
            "reference", "--no-progress", *extra]


def test_changed_arguments_are_listed(text_file: Path, tmp_path: Path, presets: None, capsys) -> None:
    out = tmp_path / "run"
    assert main(_cli(text_file, out, "--steps", "6", "--stop-at", "2")) == 0
    other = tmp_path / "other.txt"
    other.write_text(synthetic_text(40_000, seed=1))
    capsys.readouterr()
    assert main(["train-lm", "--data", str(other), "--preset", "micro-other", "--out", str(out), "--steps", "10",
                 "--seed", "7", "--resume", "--no-progress"]) == 2
    line = _one_error_line(capsys, "train-lm")
    for diff in ("--data: ", "other.txt", "--preset: micro-test -> micro-other", "train.seed: 0 -> 7",
                 "train.phases[0].seq_len: 16 -> 8", "--steps: 6 -> 10 (pass --extend"):
        assert diff in line, (diff, line)
    assert load_state(out)["step"] == 2  # nothing was trained on the other data
    # the same arguments resume (how attention is computed may change)
    assert main(_cli(text_file, out, "--steps", "6", "--resume", "--attn-impl", "auto")) == 0
    assert load_state(out)["step"] == 6


def test_same_name_other_content_is_refused(text_file: Path, tmp_path: Path) -> None:
    train(micro_preset(steps=4), _opts(text_file, tmp_path / "run", stop_at=1))
    text_file.write_text(synthetic_text(40_000, seed=3))  # edited in place: same path and size
    with pytest.raises(Exception, match=r"--data: .*corpus.txt \(40000 bytes, sha256 [0-9a-f]{12}\) -> "):
        train(micro_preset(steps=4), _opts(text_file, tmp_path / "run", resume=True))


def test_finished_run_says_so_and_extend_trains_the_last_phase_longer(text_file: Path, tmp_path: Path,
                                                                      presets: None, capsys) -> None:
    out = tmp_path / "run"
    assert main(_cli(text_file, out)) == 0
    capsys.readouterr()
    assert main(_cli(text_file, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert "already finished at step 8" in err and "--extend --steps M" in err
    assert main(_cli(text_file, out, "--resume", "--steps", "12")) == 2
    assert "--steps: 8 -> 12 (pass --extend to train further)" in _one_error_line(capsys, "train-lm")
    assert main(_cli(text_file, out, "--resume", "--extend", "--steps", "6")) == 2
    assert "cannot be shortened" in _one_error_line(capsys, "train-lm")
    assert main(_cli(text_file, out, "--resume", "--extend", "--steps", "12")) == 0
    extended = load_state(out)
    assert extended["step"] == 12 and [p["steps"] for p in extended["train_config"]["phases"]] == [4, 8]

    # the same as a run whose last phase had 8 steps from the start
    longer = micro_preset(steps=8)
    longer.train.phases[1] = replace(longer.train.phases[1], steps=8)
    train(longer, _opts(text_file, tmp_path / "longer"))
    reference = load_state(tmp_path / "longer")
    for name in reference["model"]:
        assert torch.equal(extended["model"][name], reference["model"][name]), name
    with pytest.raises(RunFinished, match="already finished at step 12"):
        train(micro_preset(steps=8), _opts(text_file, out, resume=True, steps=12, preset_name="micro-test"))


def test_resume_from_last_old_after_a_death_between_renames(text_file: Path, tmp_path: Path) -> None:
    train(micro_preset(steps=6), _opts(text_file, tmp_path / "straight"))
    out = tmp_path / "cut"
    train(micro_preset(steps=6), _opts(text_file, out, stop_at=3))
    os.replace(out / "last", out / ".last.old")  # killed between replace_dir's two renames
    assert load_state(out)["step"] == 3  # readers find it where it is
    train(micro_preset(steps=6), _opts(text_file, out, resume=True))
    a, b = load_state(tmp_path / "straight"), load_state(out)
    assert b["step"] == 6 and not (out / ".last.old").exists()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_nothing_to_resume_starts_a_new_run(text_file: Path, tmp_path: Path, capsys) -> None:
    train(micro_preset(steps=2), _opts(text_file, tmp_path / "run", resume=True))
    assert "nothing to resume" in capsys.readouterr().out
    assert load_state(tmp_path / "run")["step"] == 2


def test_cli_mistakes_are_one_error_line(text_file: Path, tmp_path: Path, presets: None, capsys) -> None:
    out = tmp_path / "run"
    assert main(_cli(text_file, out, "--steps", "2")) == 0
    capsys.readouterr()
    assert main(_cli(text_file, out, "--steps", "2")) == 2
    assert "already holds a run" in _one_error_line(capsys, "train-lm")

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert main(_cli(empty, tmp_path / "e")) == 2
    assert "is empty (0 bytes)" in _one_error_line(capsys, "train-lm")
    assert main(_cli(tmp_path / "missing.txt", tmp_path / "m")) == 2
    assert "neither an existing file" in _one_error_line(capsys, "train-lm")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abc " * 4)
    assert main(_cli(tiny, tmp_path / "t")) == 2
    assert "fewer than seq_len + 1" in _one_error_line(capsys, "train-lm")
    assert main(_cli(text_file, tmp_path / "s", "--steps", "0")) == 2
    assert "--steps must be >= 1" in _one_error_line(capsys, "train-lm")
    assert main(_cli(text_file, tmp_path / "x", "--extend")) == 2
    assert "--extend continues an existing run" in _one_error_line(capsys, "train-lm")

    assert main(["generate", "--checkpoint", str(out), "--prompt", ""]) == 2
    assert "--prompt must not be empty" in _one_error_line(capsys, "generate")
    assert main(["eval-lm", "--checkpoint", str(out), "--data", str(text_file), "--seq-len", "0"]) == 2
    assert "seq_len must be >= 1" in _one_error_line(capsys, "eval-lm")
    assert main(["eval-lm", "--checkpoint", str(tmp_path / "nowhere"), "--data", str(text_file), "--seq-len", "8"]) == 2
    assert "does not exist" in _one_error_line(capsys, "eval-lm")

    state = out / "last" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # truncated
    assert main(["eval-lm", "--checkpoint", str(out), "--data", str(text_file), "--seq-len", "8"]) == 2
    assert "trainer_state.pt is corrupt or truncated" in _one_error_line(capsys, "eval-lm")
    assert main(["generate", "--checkpoint", str(out), "--prompt", "a"]) == 2
    assert "corrupt or truncated" in _one_error_line(capsys, "generate")
    assert main(_cli(text_file, out, "--steps", "2", "--resume")) == 2
    assert "corrupt or truncated" in _one_error_line(capsys, "train-lm")


def test_old_layout_is_read_but_not_resumed(text_file: Path, tmp_path: Path, presets: None, capsys) -> None:
    out = tmp_path / "old"
    train(micro_preset(steps=2), _opts(text_file, tmp_path / "new"))
    out.mkdir()
    os.replace(tmp_path / "new" / "last" / "trainer_state.pt", out / "checkpoint.pt")  # the older layout
    assert main(["generate", "--checkpoint", str(out), "--prompt", "a", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(_cli(text_file, out, "--steps", "2")) == 2
    assert "already holds a run (checkpoint.pt)" in _one_error_line(capsys, "train-lm")
    assert main(_cli(text_file, out, "--steps", "2", "--resume")) == 2
    assert "older layout" in _one_error_line(capsys, "train-lm")


@pytest.mark.slow
def test_torchrun_stop_and_resume_equals_straight(text_file: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "run_ddp.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "from lm_helpers import micro_preset\n"
        "from longformer.lm.train import RunOptions, train\n"
        "out, stop_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'\n"
        f"train(micro_preset(steps=6), RunOptions(data=Path({str(text_file)!r}), out=Path(out), vocab='bytes',\n"
        "      progress=False, stop_at=stop_at or None, resume=resume))\n")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out, stop_at, resume in (("straight", 0, 0), ("cut", 3, 0), ("cut", 0, 1)):
        subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", str(script),
                        str(tmp_path / out), str(stop_at), str(resume)], check=True, timeout=300, env=env)
    a, b = load_state(tmp_path / "straight"), load_state(tmp_path / "cut")
    assert a["step"] == b["step"] == 6 and len(b["data_rng"]) == 2
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    with pytest.raises(Exception, match="processes: 2 -> 1"):  # every process continues its own data stream
        train(micro_preset(steps=8), _opts(text_file, tmp_path / "cut", resume=True, extend=True, steps=8))
