"""The one error type of `longformer convert`: what was wrong with the source, said plainly."""
from __future__ import annotations

from ..errors import LongformerError


class ConversionError(LongformerError, ValueError):
    """The source checkpoint or the requested conversion cannot be done (message says why)."""
