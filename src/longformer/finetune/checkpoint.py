"""Fine-tuned checkpoint directories: the best model (``OUT/best``, for use) and the model files of
the resume point (``OUT/last``, written by `longformer.training.RunDir`). Both are built in a
staging dir and swapped in whole (`longformer._files.replace_dir`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .._files import replace_dir, staging_dir

# Tokenizer files copied next to the weights so a checkpoint dir is self-contained.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt")


def write_model_files(model: torch.nn.Module, tokenizer_dir: Path, directory: Path, info: dict[str, Any]) -> None:
    """``save_pretrained`` + the tokenizer files of ``tokenizer_dir`` + ``finetune.json`` into ``directory``."""
    model.save_pretrained(str(directory))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, directory / name)
    (directory / "finetune.json").write_text(json.dumps(info, indent=2))


def save_model_dir(model: torch.nn.Module, tokenizer_dir: Path, final: Path, info: dict[str, Any]) -> None:
    """`write_model_files` into a staging dir, then swap it in as ``final`` (a kill at any moment
    leaves the old or the new directory)."""
    staged = staging_dir(final)
    write_model_files(model, tokenizer_dir, staged, info)
    replace_dir(staged, final)
