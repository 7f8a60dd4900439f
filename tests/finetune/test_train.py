"""End to end through the command: training, best checkpoint, metrics JSON, resume, predict, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import classification_rows, write_jsonl

from longformer.finetune.__main__ import main


def _files(tmp_path: Path, n_train: int = 16, **kw) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "train.jsonl", classification_rows(n_train, seed=0, **kw)),
            write_jsonl(tmp_path / "dev.jsonl", classification_rows(8, seed=1, **kw)))


def _args(model: Path, train: Path, dev: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--task", "classification", "--model", str(model), "--train", str(train),
            "--validation", str(dev), "--out", str(out), "--batch-size", "4", "--lr", "3e-3", "--no-progress",
            *extra]


def test_learns_keeps_best_and_predicts(tiny_model_dir: Path, tmp_path: Path) -> None:
    train, dev = _files(tmp_path, n_train=64)
    out = tmp_path / "out"
    assert main(_args(tiny_model_dir, train, dev, out, "--test", str(dev), "--epochs", "5", "--grad-accum", "2",
                      "--gradient-checkpointing", "--lr", "5e-3", "--warmup-ratio", "0")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 5 * 8 and len(m["history"]) == 5 and m["global_batch_size"] == 8
    best = max(h["validation"]["f1"] for h in m["history"])
    assert m["best"]["value"] == best and m["validation"]["f1"] == pytest.approx(best)
    assert m["test"]["accuracy"] == m["validation"]["accuracy"]  # same file, same best checkpoint
    assert m["validation"]["accuracy"] >= 0.75, m["history"]
    assert m["peak_memory_mb"] > 0 and m["train_time_s"] > 0
    info = json.loads((out / "best" / "finetune.json").read_text())
    assert info["labels"] == ["neg", "pos"] and (out / "best" / "tokenizer.json").is_file()

    unlabeled = write_jsonl(tmp_path / "u.jsonl", [{"text": r["text"]} for r in classification_rows(8, seed=1)])
    assert main(["predict", "--model", str(out / "best"), "--input", str(unlabeled),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and {p["label"] for p in preds} <= {"neg", "pos"}
    assert all(sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for p in preds)
    assert not (tmp_path / "p.jsonl.metrics.json").exists()
    assert main(["predict", "--model", str(out / "best"), "--input", str(dev), "--output", str(tmp_path / "q.jsonl")]) == 0
    scored = json.loads((tmp_path / "q.jsonl.metrics.json").read_text())
    assert scored == m["validation"]


def test_bf16_autocast_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    train, dev = _files(tmp_path, n_train=8)
    out = tmp_path / "out"
    assert main(_args(tiny_model_dir, train, dev, out, "--max-steps", "2", "--bf16")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 2 and m["config"]["bf16"] and 0 <= m["validation"]["accuracy"] <= 1


def test_resume_continues_to_the_same_weights(tiny_model_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    train, dev = _files(tmp_path)
    args = ("--epochs", "2", "--seed", "3", "--save-every", "1")
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "full", *args)) == 0

    calls = {"n": 0}
    from longformer.finetune.tasks import TASKS

    task = TASKS["classification"]
    real = task.loss_sum

    def crash_on_sixth(*a, **k):  # simulate a killed job in the second epoch (4 steps per epoch)
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(task, "loss_sum", crash_on_sixth)
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "cut", *args)) == 130  # the CLI's code for an interrupt
    monkeypatch.undo()
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "cut", *args)) == 2  # refuses without --resume
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "cut", *args, "--resume")) == 0
    full, cut = load_file(str(tmp_path / "full" / "last" / "model.safetensors")), \
        load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=1e-5, atol=1e-6)
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "cut"))
    assert a["history"] == b["history"] and b["steps"] == 8


def test_bad_inputs_say_what_to_do(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train, dev = _files(tmp_path)
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "alpha", "label": "maybe"}])
    assert main(_args(tiny_model_dir, train, odd, tmp_path / "o1")) == 2
    assert "label(s) ['maybe'] that training never saw" in capsys.readouterr().err

    long_train = write_jsonl(tmp_path / "long.jsonl", classification_rows(8, seed=0, min_words=130, max_words=140))
    assert main(_args(tiny_model_dir, long_train, dev, tmp_path / "o2", "--max-steps", "1", "--no-truncate")) == 2
    assert "8 of 8 train examples are longer than max_length=128" in capsys.readouterr().err
    assert main(_args(tiny_model_dir, long_train, dev, tmp_path / "o3", "--max-steps", "1", "--truncate")) == 0
    m = json.loads((tmp_path / "o3" / "metrics.json").read_text())
    assert any("8 of 8 train examples" in w and "cut" in w for w in m["warnings"])

    assert main(_args(tiny_model_dir, tmp_path / "missing.jsonl", dev, tmp_path / "o4")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(_args(tiny_model_dir, train, dev, tmp_path / "o5", "--max-length", "4096")) == 2
    assert "exceeds what" in capsys.readouterr().err


def test_token_classification_predicts_a_tag_per_word(tiny_model_dir: Path, tmp_path: Path) -> None:
    from test_ddp import token_rows

    data = write_jsonl(tmp_path / "t.jsonl", token_rows(8))
    out = tmp_path / "out"
    assert main(["finetune", "--task", "token-classification", "--model", str(tiny_model_dir), "--train", str(data),
                 "--validation", str(data), "--out", str(out), "--max-steps", "2", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "token_macro_f1", "entity_f1"} <= set(m["validation"])
    assert main(["predict", "--model", str(out / "best"), "--input", str(data), "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [len(r["tags"]) for r in rows] == [len(r["tokens"]) for r in token_rows(8)]
    assert json.loads((tmp_path / "p.jsonl.metrics.json").read_text()) == m["validation"]
