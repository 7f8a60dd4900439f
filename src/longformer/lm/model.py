"""A decoder-only causal Longformer for character/byte language modelling.

Pre-LayerNorm blocks; each attention layer calls the one attention core
`longformer.sliding_window_attention(..., causal=True)` with its own one-sided window and per-head
dilation. Positions are rotary (RoPE): q.k depends only on the distance i - j, and a causal window
bounds that distance by w * r, so a model trained at length L meets no unseen distance at 4L or 40L.
(The paper used relative sinusoidal positions for the same reason; rotary gives the same property
with no extra parameters and with a plain (B, H, T, D) q/k that the attention core accepts.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..attention import sliding_window_attention
from ..linear import linear
from .config import LMConfig


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim // 2) for integer ``positions`` (T,).

    Angles are computed in float64: at position 1e5 a float32 angle would be off by ~1e-2 rad, which
    would make long-context evaluation differ from what training saw.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[..., :D/2], x[..., D/2:]) of x (B, H, T, D) by the angles of cos/sin (T, D/2).

    Computed in fp32 in the (B, T, H, D) order of the projection x comes from, and returned as a
    (B, H, T, D) view of (B, T, H, D) memory: the attention kernel reads that layout in place and
    writes its output in it too, which the output projection then reads without a copy.
    """
    x1, x2 = x.transpose(1, 2).float().chunk(2, dim=-1)  # (B, T, H, D/2) each
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return out.to(x.dtype).transpose(1, 2)


class CausalLocalAttention(nn.Module):
    """Multi-head causal sliding-window attention with per-head dilation and rotary positions.

    Query i of a head with dilation r sees keys i, i - r, ..., i - w*r (DESIGN.md, causal).
    """

    def __init__(self, d_model: int, n_head: int, window: int, dilation: Sequence[int], impl: str) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.window, self.dilation, self.impl = window, tuple(dilation), impl
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, T, C) -> rotated q, k and v, each (B, H, T, D)."""
        B, T, C = x.shape
        q, k, v = linear(x, self.qkv).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); cos/sin (T, D/2) from `rotary_tables` for the positions of x."""
        B, T, C = x.shape
        w = self.window
        q, k, v = self.project(x, cos, sin)  # (B, H, T, D)
        if w >= T - 1 and all(r == 1 for r in self.dilation):
            # The window covers the whole sequence: the pattern IS full causal attention, and the fused
            # kernel computes exactly that (tested against the reference in tests/lm/test_model.py).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = sliding_window_attention(q, k, v, w, dilation=self.dilation, causal=True, impl=self.impl)
        return linear(y.transpose(1, 2).reshape(B, T, C), self.proj)


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, d_ff: int, window: int, dilation: Sequence[int],
                 dropout: float, impl: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalLocalAttention(d_model, n_head, window, dilation, impl)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), cos, sin))
        h = linear(self.ln2(x), self.ff[0], "gelu")  # ff = Linear, GELU, Linear (the names of the weights)
        if self.training and self.drop.p > 0:
            return x + self.drop(linear(h, self.ff[2]))
        return linear(h, self.ff[2], residual=x)  # one fused GEMM in inference


class LongformerLM(nn.Module):
    """tokens (B, T) int64 in [0, vocab_size) -> logits (B, T, vocab_size): position t predicts t+1."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = replace(config)  # a copy: set_windows changes it during staged training
        c = self.config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.d_model, c.n_head, c.d_ff, w, r, c.dropout, c.attn_impl) for w, r in zip(c.windows, c.dilations)
        )
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2's scaled init of residual projections keeps the residual stream's variance flat in depth.
        for block in self.blocks:
            for lin in (block.attn.proj, block.ff[2]):
                nn.init.normal_(lin.weight, std=0.02 / (2 * c.n_layer) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def set_windows(self, windows: Sequence[int]) -> None:
        """Change every layer's one-sided window (the staged schedule grows them between phases)."""
        if len(windows) != len(self.blocks):
            raise ValueError(f"windows must have {len(self.blocks)} entries (one per layer), got {len(windows)}")
        for block, w in zip(self.blocks, windows):
            block.attn.window = int(w)
        self.config.windows = tuple(int(w) for w in windows)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """start_pos offsets the rotary positions; logits do not depend on it (relative positions)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a (B, T) int64 tensor, got shape {tuple(tokens.shape)} dtype {tokens.dtype}")
        B, T = tokens.shape
        cos, sin = rotary_tables(torch.arange(start_pos, start_pos + T, device=tokens.device),
                                 self.config.d_model // self.config.n_head, self.config.rope_base)
        x = self.drop(self.embed(tokens))  # (B, T, C)
        for block in self.blocks:
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        return self.head(self.ln_f(x))  # (B, T, V)
