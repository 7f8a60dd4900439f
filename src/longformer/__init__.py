"""longformer: transformers that read long documents.

Importing this package touches no device and loads no model; heavy modules load on first use.
"""
from .attention import sliding_window_attention

__version__ = "0.1.0"
__all__ = ["sliding_window_attention", "accelerate", "__version__"]


def __getattr__(name: str):
    # `longformer.accelerate` needs transformers (optional): imported on first use only.
    if name == "accelerate":
        from .interop.swap import accelerate

        return accelerate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
