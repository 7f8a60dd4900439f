"""Longformer attention: the spec (reference) and the fast kernels, behind one function."""
from .api import IMPLS, sliding_window_attention
from .reference import allowed_pairs, reference_attention

__all__ = ["IMPLS", "sliding_window_attention", "allowed_pairs", "reference_attention"]
