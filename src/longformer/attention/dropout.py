"""Attention-probability dropout as a pure function of (seed, head, query position, key position).

Whether probability (i, j) of head (b, h) survives is decided by a 32-bit hash, the same in torch
(here) and in the compiled kernel (_kernel.cpp): nothing is stored for backward, which regenerates
the mask, and the dense reference applies the identical mask, so fast paths are tested against the
spec with dropout on. Kept probabilities are scaled by 1 / (1 - p), as in torch.nn.Dropout; the
softmax's normaliser (and the saved log-sum-exp) is that of the undropped probabilities.

The hash (murmur3's finaliser, fmix32; all arithmetic mod 2^32):
    head = fmix32(seed ^ ((b * H + h) * 0x9E3779B1))
    row  = fmix32(head ^ (i * 0x85EBCA77))
    keep = fmix32(row + j * 0xC2B2AE3D) >= threshold,  threshold = round(p * 2^32)
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF


def threshold(p: float) -> int:
    """The uint32 threshold of drop probability p (0 <= p < 1); 0 means no dropout."""
    return min(M32, round(p * 2.0**32))


def keep_scale(thr: int) -> float:
    return 1.0 / (1.0 - thr / 2.0**32)


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    # int64 tensors holding uint32 values: products wrap in int64, their low 32 bits are exact
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & M32
    return x ^ (x >> 16)


def keep_factor(seed: int, thr: int, b: int, H: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(H, len(rows), len(cols)) float32: 1/(1-p) where probability (rows[x], cols[y]) of head (b, h) is
    kept, 0 where dropped. rows, cols: int64 positions."""
    h = torch.arange(H, dtype=torch.int64, device=rows.device)
    head = _fmix32((seed ^ (((b * H + h) * 0x9E3779B1) & M32)) & M32)  # (H,)
    row = _fmix32(head[:, None] ^ ((rows.to(torch.int64) * 0x85EBCA77) & M32)[None, :])  # (H, n)
    e = _fmix32((row[:, :, None] + ((cols.to(torch.int64) * 0xC2B2AE3D) & M32)[None, None, :]) & M32)
    return (e >= thr).to(torch.float32) * keep_scale(thr)


def keep_blocks(seed: int, thr: int, bh: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(n, c, L) float32 keep factors of n score blocks: block x belongs to head bh[x] = b * H + h and
    holds query positions rows[x] (c,) against key positions cols[x] (L,). Positions outside the
    sequence get some factor; the kernels mask those scores anyway."""
    bh, rows, cols = (t.to(torch.int64) for t in (bh, rows, cols))
    head = _fmix32((seed ^ ((bh * 0x9E3779B1) & M32)) & M32)  # (n,)
    row = _fmix32(head[:, None] ^ ((rows * 0x85EBCA77) & M32))  # (n, c)
    e = _fmix32((row[:, :, None] + ((cols * 0xC2B2AE3D) & M32)[:, None, :]) & M32)
    return (e >= thr).to(torch.float32) * keep_scale(thr)


def dense_keep_factor(seed: int, thr: int, B: int, H: int, T: int, device) -> torch.Tensor:
    """(B, H, T, T) keep factors of every (query, key) pair, for the dense reference."""
    pos = torch.arange(T, dtype=torch.int64, device=device)
    return torch.stack([keep_factor(seed, thr, b, H, pos, pos) for b in range(B)])
