"""The arguments of `pretrain-mlm` (no torch import: the CLI reads the defaults from here)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PretrainConfig:
    """Arguments of ``longformer pretrain-mlm`` (see docs/pretrain.md). ``batch_size`` is per process."""

    model: str
    train: list[str]
    out: str
    validation: list[str] = field(default_factory=list)
    max_length: int = 4096
    steps: int = 3000
    batch_size: int = 1
    grad_accum: int | None = None  # None: PAPER_GLOBAL_BATCH // (batch_size x processes)
    lr: float = 3e-5
    warmup: int = 500
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    mask_probability: float = 0.15
    freeze_encoder: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_every: int = 500
    eval_seed: int = 0
    eval_batch_size: int = 1
    save_every: int = 500
    resume: bool = False
    extend: bool = False
    stop_at: int | None = None  # save and stop after this step (as a kill would), for checks
    device: str | None = None
    progress: bool = True
