"""Checkpoints of a language-model run, in the layout every training command shares
(`longformer.training.run`): ``OUT/last/`` replaced as a whole at each save.

``OUT/last/trainer_state.pt`` holds everything a resume needs (model, optimizer, RNG states, every
process's data sampler state, step, phase, configs); ``OUT/last/config.json`` is the human-readable
model and training config; ``OUT/last/run.json`` the run's arguments (what ``--resume`` compares).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .._files import read_torch
from ..errors import CheckpointFileError
from ..training import LAST, STATE_FILE
from .config import LMConfig, Phase, TrainConfig
from .model import LongformerLM

CONFIG = "config.json"
LEGACY_CHECKPOINT = "checkpoint.pt"  # OUT/checkpoint.pt, the layout before OUT/last (still readable)


def train_config_to_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["betas"] = list(d["betas"])
    return d


def train_config_from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["phases"] = [Phase(**p) for p in d["phases"]]
    d["betas"] = tuple(d["betas"])
    return TrainConfig(**d)


def write_config(directory: Path, model_cfg: LMConfig, train_cfg: TrainConfig, extra: dict) -> None:
    """config.json beside the state (inside a staging dir: the swap makes it atomic)."""
    meta = {"model": model_cfg.to_dict(), "train": train_config_to_dict(train_cfg), **extra}
    (Path(directory) / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def state_path(directory: str | Path) -> Path:
    """The state file of a train-lm run given as its ``OUT`` dir, its ``OUT/last`` dir, or the older
    ``OUT/checkpoint.pt`` layout. A run killed between the two renames of a save has only
    ``OUT/.last.old``: it is read from there (without moving it, a trainer may be running)."""
    directory = Path(directory)
    for candidate in (directory / LAST / STATE_FILE, directory / f".{LAST}.old" / STATE_FILE,
                      directory / STATE_FILE, directory / LEGACY_CHECKPOINT):
        if candidate.is_file():
            return candidate
    if not directory.exists():
        raise FileNotFoundError(f"--checkpoint: {directory} does not exist (train one with `longformer train-lm`)")
    raise CheckpointFileError(f"--checkpoint: no trained model in {directory} (expected {LAST}/{STATE_FILE}, "
                              "written by `longformer train-lm`)")


def load_state(directory: str | Path) -> dict:
    """The training state of a run (see `state_path`); a truncated file names itself."""
    state = read_torch(state_path(directory), "train-lm checkpoint")
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointFileError(f"{state_path(directory)} is not a train-lm checkpoint (no model in it)")
    return state


def load_model(directory: str | Path, attn_impl: str | None = None) -> tuple[LongformerLM, dict]:
    """The trained model of a run directory (eval mode) and its checkpoint state.

    The model gets the windows of the phase it was last trained in.
    """
    state = load_state(directory)
    cfg = LMConfig.from_dict(state["model_config"])
    if attn_impl is not None:
        cfg.attn_impl = attn_impl
    model = LongformerLM(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state
