from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from lm_helpers import micro_preset

from longformer.cli import main
from longformer.lm.checkpoint import load_model, load_state
from longformer.lm.config import PRESETS
from longformer.lm.train import RunOptions, lr_multiplier, phase_at, rescale_phases, train


def _opts(text_file: Path, out: Path, **kw) -> RunOptions:
    return RunOptions(data=text_file, out=out, vocab="bytes", progress=False, **kw)


def test_schedule_phases_and_lr():
    phases = micro_preset(steps=10).train.phases
    assert [phase_at(phases, s)[0] for s in range(10)] == [0] * 5 + [1] * 5
    lrs = [lr_multiplier(phases, s) * phases[0].lr for s in range(10)]
    assert lrs[0] == pytest.approx(1.5e-3) and lrs[1:5] == pytest.approx([3e-3] * 4)  # warmup, then constant
    assert lrs[5:] == pytest.approx([1.5e-3] * 5)  # next phase: lower rate
    scaled = rescale_phases(phases, 30)
    assert [p.steps for p in scaled] == [15, 15] and scaled[0].warmup == 6
    with pytest.raises(ValueError, match="--steps"):
        rescale_phases(phases, 1)


def test_exact_resume_after_stop(text_file: Path, tmp_path: Path):
    train(micro_preset(steps=8), _opts(text_file, tmp_path / "straight"))
    train(micro_preset(steps=8), _opts(text_file, tmp_path / "stopped", stop_at=3))
    assert load_state(tmp_path / "stopped")["step"] == 3
    train(micro_preset(steps=8), _opts(text_file, tmp_path / "stopped", resume=True))
    a, b = load_state(tmp_path / "straight"), load_state(tmp_path / "stopped")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["data_rng"][0], b["data_rng"][0])
    rows = list(csv.DictReader(open(tmp_path / "stopped" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]  # rows are not duplicated by the resume
    assert (tmp_path / "stopped" / "curve.png").stat().st_size > 1000


def test_sigterm_saves_a_checkpoint_and_stops(text_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    done = threading.Event()

    def kill_when_running() -> None:
        # log.csv is written after the handlers are installed: a signal before that would kill pytest.
        while not (out / "log.csv").is_file() and not done.wait(0.05):
            pass
        if not done.wait(0.5):
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt, match="signal"):
            train(micro_preset(steps=100_000), _opts(text_file, out))
    finally:
        done.set()
        killer.join()
    stopped = load_state(out)["step"]
    assert 0 < stopped < 100_000
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    with pytest.raises(FileExistsError, match="--resume"):
        train(micro_preset(steps=4), _opts(text_file, out))


def test_cli_train_eval_generate(text_file: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(PRESETS, "micro-test", lambda: micro_preset(steps=8))
    out = tmp_path / "run"
    assert main(["train-lm", "--data", str(text_file), "--preset", "micro-test", "--out", str(out),
                 "--steps", "6", "--attn-impl", "reference", "--no-progress"]) == 0
    assert load_state(out)["step"] == 6
    assert json.loads((out / "last" / "config.json").read_text())["model"]["n_layer"] == 2
    capsys.readouterr()
    assert main(["eval-lm", "--checkpoint", str(out), "--data", str(text_file), "--split", "test",
                 "--seq-len", "64", "--stride", "16", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert res["scored"] == 1999 and 0 < res["bpc"] < 8
    assert main(["generate", "--checkpoint", str(out), "--prompt", "The ", "--max-new-tokens", "20",
                 "--top-k", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("The ")


def test_trained_model_beats_unigram_and_keeps_bpc_at_4x_length(text_file: Path, tmp_path: Path):
    import math
    from collections import Counter

    from longformer.lm.data import SymbolStream
    from longformer.lm.evaluate import evaluate_bpc

    train(micro_preset(steps=60, seq_len=48, eval_every=1000), _opts(text_file, tmp_path / "run"))
    model, _ = load_model(tmp_path / "run")
    test = SymbolStream(text_file, "test", "bytes")
    counts = Counter(test.get(0, len(test)).tolist())
    unigram = -sum(c / len(test) * math.log2(c / len(test)) for c in counts.values())
    at_1x = evaluate_bpc(model, test, 48, 24)["bpc"]
    at_4x = evaluate_bpc(model, test, 4 * 48, 24)["bpc"]
    assert at_1x < unigram - 0.5, (at_1x, unigram)
    assert at_4x <= at_1x * 1.01, (at_1x, at_4x)


@pytest.mark.slow
def test_torchrun_ddp_two_processes(text_file: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    code = ("import sys; sys.path.insert(0, %r); from lm_helpers import micro_preset; "
            "from longformer.lm.train import RunOptions, train; from pathlib import Path; "
            "train(micro_preset(steps=4), RunOptions(data=Path(%r), out=Path(%r), vocab='bytes', progress=False))"
            % (str(Path(__file__).parent), str(text_file), str(out)))
    script = tmp_path / "run_ddp.py"
    script.write_text(code)
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29531", str(script)],
                   check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert load_state(out)["step"] == 4 and len(load_state(out)["data_rng"]) == 2


def test_grad_accumulation_matches_one_big_batch(text_file: Path, tmp_path: Path):
    # Two micro-batches of 2 draw the same windows as one batch of 4 and average the same gradients.
    train(micro_preset(steps=4), _opts(text_file, tmp_path / "one"))
    train(micro_preset(steps=4, grad_accum=2), _opts(text_file, tmp_path / "two"))
    a, b = load_state(tmp_path / "one")["model"], load_state(tmp_path / "two")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_and_checkpointing_train(text_file: Path, tmp_path: Path):
    preset = micro_preset(steps=4, bf16=True)
    preset.model.grad_checkpointing = True
    row = train(preset, _opts(text_file, tmp_path / "bf16"))
    assert 0 < float(row["train_bpc"]) < 9 and float(row["val_bpc"]) < 9


def test_text8_vocab_end_to_end(tmp_path: Path):
    from lm_helpers import synthetic_text

    from longformer.lm.data import decode
    from longformer.lm.generate import generate

    path = tmp_path / "text8"
    path.write_text(synthetic_text(20_000).lower().replace(".", ""))
    train(micro_preset(steps=2), RunOptions(data=path, out=tmp_path / "run", vocab="text8", progress=False))
    model, state = load_model(tmp_path / "run")
    assert state["vocab"] == "text8" and model.config.vocab_size == 27
    out = generate(model, torch.tensor([[1, 0]]), 10, generator=torch.Generator().manual_seed(0))
    assert set(decode(out[0].tolist(), "text8")) <= set(" abcdefghijklmnopqrstuvwxyz")
