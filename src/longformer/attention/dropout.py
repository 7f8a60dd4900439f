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


def _i32(c: int) -> int:
    """The int32 with the bits of the uint32 c."""
    c &= M32
    return c - (1 << 32) if c >= 1 << 31 else c


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    # int32 tensors holding the uint32 bits: products and sums wrap mod 2^32 as in C; the logical
    # right shifts are arithmetic shifts with the sign bits masked off. (int32 rather than int64:
    # half the memory traffic, measured 3x faster on a (16, 64, 576) block of scores.)
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _i32(0x85EBCA6B)
    x = x ^ ((x >> 13) & 0x7FFFF)
    x = x * _i32(0xC2B2AE35)
    return x ^ ((x >> 16) & 0xFFFF)


def _kept(e: torch.Tensor, thr: int) -> torch.Tensor:
    """float32 keep factors from hashes e: unsigned e >= thr, compared with both top bits flipped."""
    return ((e ^ _i32(1 << 31)) >= thr - (1 << 31)).to(torch.float32) * keep_scale(thr)


def keep_factor(seed: int, thr: int, b: int, H: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(H, len(rows), len(cols)) float32: 1/(1-p) where probability (rows[x], cols[y]) of head (b, h) is
    kept, 0 where dropped. rows, cols: integer positions."""
    h = torch.arange(H, dtype=torch.int32, device=rows.device)
    head = _fmix32(_i32(seed) ^ ((b * H + h) * _i32(0x9E3779B1)))  # (H,)
    row = _fmix32(head[:, None] ^ (rows.to(torch.int32) * _i32(0x85EBCA77))[None, :])  # (H, n)
    return _kept(_fmix32(row[:, :, None] + (cols.to(torch.int32) * _i32(0xC2B2AE3D))[None, None, :]), thr)


def keep_blocks(seed: int, thr: int, bh: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(n, c, L) float32 keep factors of n score blocks: block x belongs to head bh[x] = b * H + h and
    holds query positions rows[x] (c,) against key positions cols[x] (L,). Positions outside the
    sequence get some factor; the kernels mask those scores anyway."""
    bh, rows, cols = (t.to(torch.int32) for t in (bh, rows, cols))
    head = _fmix32(_i32(seed) ^ (bh * _i32(0x9E3779B1)))  # (n,)
    row = _fmix32(head[:, None] ^ (rows * _i32(0x85EBCA77)))  # (n, c)
    return _kept(_fmix32(row[:, :, None] + (cols * _i32(0xC2B2AE3D))[:, None, :]), thr)


def dense_keep_factor(seed: int, thr: int, B: int, H: int, T: int, device) -> torch.Tensor:
    """(B, H, T, T) keep factors of every (query, key) pair, for the dense reference."""
    pos = torch.arange(T, dtype=torch.int32, device=device)
    return torch.stack([keep_factor(seed, thr, b, H, pos, pos) for b in range(B)])
