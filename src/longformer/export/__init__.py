"""`longformer export MODEL OUT.onnx`: the encoder (with its task head) or the LED encoder as an ONNX graph.

Python use: ``from longformer.export import export_onnx``. torch, onnx and onnxruntime load only when
used, so `longformer --help` stays fast.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "export_onnx": "onnx_export",
    "ExportResult": "onnx_export",
    "ExportError": "graphs",
    "load_for_export": "graphs",
    "DEFAULT_OPSET": "onnx_export",
}
__all__ = [*_LAZY, "register"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(subparsers) -> None:
    from .cli import register as register_cli

    register_cli(subparsers)
