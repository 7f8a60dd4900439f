"""The optimizer and learning-rate schedule every training loop uses.

AdamW with no weight decay on vectors (biases, LayerNorm weights) and a schedule given as a pure
function ``multiplier(step) -> float`` of the 0-based optimizer step. Nothing about the schedule is
checkpointed: the rate of step ``s`` is recomputed from the function, so a resumed run (also one
whose schedule was extended with ``--extend``) uses exactly the rate the function gives at that step.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def adamw(model: torch.nn.Module, lr: float, weight_decay: float,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: matrices (ndim >= 2) decay by ``weight_decay``, vectors
    (biases, LayerNorm weights, ndim < 2) do not (decaying a LayerNorm gain towards 0 only hurts).

    Two param groups, decay first, each in ``model.parameters()`` order.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base rate at 0-based ``step``: linear warmup over ``warmup`` steps
    ((s+1)/(warmup+1)), then linear decay to 0 at ``total`` (the BERT / transformers schedule).

    Depends on ``total``: extending a run changes the rate of every step after the warmup."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


class LRSchedule:
    """Sets each param group's rate to ``base_lr * multiplier(step)`` before optimizer step ``step``.

    The base rates are the groups' ``lr`` when the schedule is made (before any optimizer state is
    loaded), so they come from the run's arguments, which a resume checks.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float]) -> None:
        self.optimizer = optimizer
        self.multiplier = multiplier
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def set(self, step: int) -> float:
        """Apply the rate of ``step`` to every group; returns the first group's rate."""
        factor = self.multiplier(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.optimizer.param_groups[0]["lr"]
