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
    "save_pretrained": "hub",
    "CheckpointError": "hub",
}
__all__ = [*_LAZY, "from_pretrained"]


def from_pretrained(path, cls=None, **kwargs):
    """Load a Hugging Face LED dir or hub id as ``cls`` (default LEDForConditionalGeneration; or LEDModel).

    BART -> LED conversion is `longformer.convert.bart_to_led` (a layer above the models)."""
    from .hub import from_pretrained as load
    from .modeling import LEDForConditionalGeneration

    return load(path, cls or LEDForConditionalGeneration, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
