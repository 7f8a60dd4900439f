"""The pretrain-mlm loop: exact resume, falling loss, the output dirs, the resume rule."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longformer.cli import main
from longformer.pretrain.config import PretrainConfig
from longformer.pretrain.train import pretrain


def _cfg(model: Path, files: tuple[Path, Path], out: Path, **over) -> PretrainConfig:
    base = dict(model=str(model), train=[str(files[0])], validation=[str(files[1])], out=str(out), max_length=24,
                steps=6, batch_size=2, grad_accum=2, lr=3e-3, warmup=10, eval_every=3, save_every=2, seed=5,
                progress=False)
    base.update(over)
    return PretrainConfig(**base)


def _run(cfg: PretrainConfig) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(cfg)


def test_interrupted_and_resumed_equals_uninterrupted(encoder_dir: Path, corpus_files, tmp_path: Path) -> None:
    # dropout 0.1 is on: the resumed run must also continue the dropout RNG exactly
    whole = _run(_cfg(encoder_dir, corpus_files, tmp_path / "whole"))
    cut = tmp_path / "cut"
    first = _run(_cfg(encoder_dir, corpus_files, cut, stop_at=3))
    assert first["step"] == 3 and not first["finished"]
    assert json.loads((cut / "last" / "run.json").read_text())["step"] == 3 and not (cut / "model").exists()
    second = _run(_cfg(encoder_dir, corpus_files, cut, resume=True))
    assert second["finished"] and second["step"] == 6
    a, b = load_file(str(tmp_path / "whole" / "model" / "model.safetensors")), load_file(str(cut / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["train_bpc"] for r in whole["history"][1:]] == [r["train_bpc"] for r in second["history"][1:]]
    # the final model is also the resume point's weights
    last = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    assert all(torch.equal(last[k], a[k]) for k in a)


def test_resume_with_other_arguments_is_refused(encoder_dir: Path, corpus_files, tmp_path: Path, capsys) -> None:
    common = ["pretrain-mlm", "--model", str(encoder_dir), "--train", str(corpus_files[0]), "--out", str(tmp_path / "r"),
              "--max-length", "24", "--batch-size", "2", "--no-progress"]
    args = [*common, "--steps", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
        assert main(args) == 2  # a run is there and no --resume
        assert "already holds a run" in capsys.readouterr().err
        assert main([*args, "--resume", "--lr", "0.01"]) == 2
        err = capsys.readouterr().err
        assert "--lr: 3e-05 -> 0.01" in err and err.count("\n") >= 1
        assert main([*args, "--resume"]) == 0  # finished: says so, exit 0
        assert "already finished at step 2" in capsys.readouterr().err
        assert main([*common, "--steps", "3", "--resume", "--extend"]) == 0
    assert json.loads((tmp_path / "r" / "last" / "run.json").read_text())["step"] == 3


def test_loss_falls_and_model_dirs_load(encoder_dir: Path, corpus_files, tmp_path: Path) -> None:
    result = _run(_cfg(encoder_dir, corpus_files, tmp_path / "run", steps=30, eval_every=30, save_every=30,
                       lr=1e-2, warmup=3))
    start, end = result["history"][0]["validation"], result["history"][-1]["validation"]
    assert start["masked_tokens"] == end["masked_tokens"] > 20  # the same fixed mask both times
    assert end["bpc"] < start["bpc"] - 0.3, (start["bpc"], end["bpc"])  # measured: 4.87 -> 4.33
    from longformer.encoder import LongformerForMaskedLM

    for name in ("model", "last"):
        ours = LongformerForMaskedLM.from_pretrained(tmp_path / "run" / name)
        assert ours.lm_head.decoder.weight is ours.longformer.embeddings.word_embeddings.weight
    info = json.loads((tmp_path / "run" / "model" / "pretrain.json").read_text())
    assert info["new_head_keys"] and info["grad_accum"] == 2
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "run" / "model")
    torch.testing.assert_close(hf.lm_head.dense.weight.detach(), ours.lm_head.dense.weight)
    torch.testing.assert_close(hf.get_output_embeddings().weight.detach(), ours.longformer.embeddings.word_embeddings.weight)


def test_eval_mlm_command(encoder_dir: Path, corpus_files, tmp_path: Path, capsys) -> None:
    assert main(["eval-mlm", "--model", str(encoder_dir), "--file", str(corpus_files[1]), "--max-length", "24"]) == 2
    assert "has no MLM head" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run(_cfg(encoder_dir, corpus_files, tmp_path / "run", steps=1, validation=[]))
    model = str(tmp_path / "run" / "model")
    results = []
    for length in ("24", "64"):
        assert main(["eval-mlm", "--model", model, "--file", str(corpus_files[1]), "--max-length", length,
                     "--seed", "3", "--no-progress"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    # different lengths, the same scored tokens
    assert results[0]["masked_tokens"] == results[1]["masked_tokens"] and results[0]["masked_chars"] == results[1]["masked_chars"]
    assert results[0]["sequences"] > results[1]["sequences"] and results[0]["bpc"] > 0
    assert main(["eval-mlm", "--model", model, "--file", str(corpus_files[1]), "--max-length", "65"]) == 2
    assert "exceeds" in capsys.readouterr().err


def test_transformers_computes_the_same_model(corpus_files, tmp_path: Path) -> None:
    """A roberta-style model (what transformers' Longformer implements) after pretrain-mlm: transformers'
    LongformerForMaskedLM loads OUT/model and gives our logits."""
    transformers = pytest.importorskip("transformers")
    from pretrain_helpers import build_model_dir

    from longformer.encoder import LongformerForMaskedLM

    model = build_model_dir(tmp_path / "enc", positions="roberta", dropout=0.0)
    _run(_cfg(model, corpus_files, tmp_path / "run", steps=2, validation=[]))
    ours = LongformerForMaskedLM.from_pretrained(tmp_path / "run" / "model")
    hf = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "run" / "model").eval()
    ids = torch.randint(5, ours.config.vocab_size, (2, 30))
    mask = torch.ones_like(ids)
    ids[1, 20:], mask[1, 20:] = 0, 0  # padding (pad_token_id 0)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], rtol=1e-4, atol=1e-4)
