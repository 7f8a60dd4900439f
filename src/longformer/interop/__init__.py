"""Doors for users of transformers: `accelerate` (our attention core inside transformers' own Longformer
and LED models) and `SaveConfigCallback` (config.json in what transformers.Trainer saves).

Both need transformers, an optional dependency, so they load on first use: importing this package
imports neither transformers nor torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["accelerate", "SaveConfigCallback"]


def __getattr__(name: str) -> Any:
    if name == "accelerate":
        from .swap import accelerate

        return accelerate
    if name == "SaveConfigCallback":
        from .trainer import SaveConfigCallback

        return SaveConfigCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
