"""LED, the Longformer-Encoder-Decoder: Longformer attention in the encoder, a BART decoder, generation.

``from longformer.led import LEDForConditionalGeneration``; torch-heavy modules load on first use so
that `longformer --help` stays fast.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "LEDConfig": "config",
    "LEDModel": "modeling",
    "LEDForConditionalGeneration": "modeling",
    "generate": "generation",
    "from_pretrained": "hub",
    "save_pretrained": "hub",
    "CheckpointError": "hub",
    "bart_to_led": "from_bart",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
