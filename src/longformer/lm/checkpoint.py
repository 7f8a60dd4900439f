"""Checkpoints of a language-model run: one directory, written atomically.

DIR/checkpoint.pt holds everything a resume needs (model, optimizer, scheduler, RNG states, data
sampler states, step, phase); DIR/config.json is the human-readable model and training config.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .._files import atomic_write
from .config import LMConfig, Phase, TrainConfig
from .model import LongformerLM

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"




def train_config_to_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["betas"] = list(d["betas"])
    return d


def train_config_from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["phases"] = [Phase(**p) for p in d["phases"]]
    d["betas"] = tuple(d["betas"])
    return TrainConfig(**d)


def save_run(out: Path, state: dict, model_cfg: LMConfig, train_cfg: TrainConfig, extra: dict) -> None:
    """Write checkpoint.pt (the full ``state``) and config.json, each atomically."""
    atomic_write(out / CHECKPOINT, lambda f: torch.save(state, f))
    meta = {"model": model_cfg.to_dict(), "train": train_config_to_dict(train_cfg), **extra}
    atomic_write(out / CONFIG, lambda f: f.write(json.dumps(meta, indent=2).encode()))


def load_state(directory: str | Path) -> dict:
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint: no {CHECKPOINT} in {directory} (train one with `longformer train-lm`)")
    return torch.load(path, map_location="cpu", weights_only=False)


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
