"""longformer: transformers that read long documents.

Importing this package touches no device and loads no model; heavy modules load on first use.
"""
from .attention import sliding_window_attention

__version__ = "0.1.0"
__all__ = ["sliding_window_attention", "__version__"]
