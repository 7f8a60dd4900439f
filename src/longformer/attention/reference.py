"""The executable spec: dense O(T^2) masked attention over the Longformer pattern.

Short on purpose. Every fast implementation is tested against this file, so it builds the allowed
(query, key) pairs straight from the definition in DESIGN.md and nothing else.
"""
from __future__ import annotations

import torch


def allowed_pairs(
    T: int,
    window: int,
    dilation: tuple[int, ...],
    causal: bool,
    key_valid: torch.Tensor | None,
    is_global: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean (B or 1, H, T, T) mask: entry [b, h, i, j] is True when query i may attend key j."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    d = j - i  # (T, T)
    r = torch.tensor(dilation, device=device)[:, None, None]  # (H, 1, 1)
    band = (d % r == 0) & (d.abs() <= window * r)  # (H, T, T)
    allowed = band[None]  # (1, H, T, T)
    if is_global is not None:
        g_row = is_global[:, None, :, None]  # (B, 1, T, 1): a global query sees every key
        g_col = is_global[:, None, None, :]  # (B, 1, 1, T): every query sees a global key
        allowed = allowed | g_row | g_col
    if causal:
        allowed = allowed & (d <= 0)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    return allowed


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    dilation: tuple[int, ...],
    causal: bool,
    key_valid: torch.Tensor | None,
    is_global: torch.Tensor | None,
    scale: float,
    dropout: tuple[float, int] | None = None,
) -> torch.Tensor:
    """Masked softmax attention. q, k, v: (B, H, T, D) -> (B, H, T, D) in q's dtype.

    dropout: (p, seed): probabilities are dropped with the hash mask of dropout.py (the one every
    kernel uses) and the kept ones scaled by 1 / (1 - p), after the softmax.

    Products run in the input dtype (so a bf16 call shows bf16's own rounding error, which sets the
    tolerance for fast kernels); the softmax runs in fp32. Rows with no allowed key give 0.
    """
    T = q.shape[-2]
    allowed = allowed_pairs(T, window, dilation, causal, key_valid, is_global, q.device)
    has_any = allowed.any(dim=-1, keepdim=True)  # (B, H, T, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, H, T, T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # A row with no allowed key would softmax to NaN (and poison gradients): give it finite scores
    # and zero its probabilities instead.
    scores = scores.masked_fill(~has_any, 0.0)
    probs = torch.softmax(scores, dim=-1) * has_any
    if dropout is not None:
        from .dropout import dense_keep_factor, threshold

        B, H = q.shape[:2]
        probs = probs * dense_keep_factor(dropout[1], threshold(dropout[0]), B, H, T, q.device)
    return torch.matmul(probs.to(v.dtype), v)
