"""Atomic checkpoint directories: the best model (for use) and the last state (for --resume)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

# Tokenizer files copied next to the weights so a checkpoint dir is self-contained.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed after, so a
    crash leaves either the old or the new directory, never a half-written one."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_model_dir(model: torch.nn.Module, tokenizer_dir: Path, final: Path, info: dict[str, Any],
                   state: dict[str, Any] | None = None) -> None:
    """``save_pretrained`` + tokenizer files + ``finetune.json`` (+ ``trainer_state.pt``), atomically."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, tmp / name)
    (tmp / "finetune.json").write_text(json.dumps(info, indent=2))
    if state is not None:
        torch.save(state, tmp / "trainer_state.pt")
    _replace_dir(tmp, final)


def load_state(directory: Path) -> dict[str, Any]:
    path = directory / "trainer_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {path}; run once without --resume first (or delete {directory})")
    return torch.load(path, map_location="cpu", weights_only=False)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
