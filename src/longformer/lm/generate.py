"""Incremental decoding for `LongformerLM` with a per-layer ring buffer of keys and values.

A causal query at position t of a head with dilation r sees positions t, t - r, ..., t - w*r, so a
layer only ever needs its last ``w * r_max + 1`` keys/values: memory is constant in the length of
the generated text, whatever that length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LMError
from .model import LongformerLM, rotary_tables


class LayerCache:
    """Ring buffer of rotated keys and values for one layer: slot ``p % size`` holds position p."""

    def __init__(self, batch: int, n_head: int, head_dim: int, window: int, dilation: tuple[int, ...],
                 max_len: int, dtype: torch.dtype, device: torch.device) -> None:
        # A full-attention layer (window >= max_len) needs no more than the whole text.
        self.size = min(window * max(dilation) + 1, max_len)
        self.window = window
        self.k = torch.zeros(batch, n_head, self.size, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.dilation = torch.tensor(dilation, device=device)[:, None]  # (H, 1)

    def allowed(self, t: int) -> torch.Tensor:
        """(H, size) bool: which slots hold a key the query at position t may attend."""
        slots = torch.arange(self.size, device=self.k.device)
        dist = (t - slots) % self.size  # distance t - p of the newest position p stored in each slot
        filled = dist <= t  # slot has been written (p = t - dist >= 0)
        return filled & (dist % self.dilation == 0) & (dist <= self.window * self.dilation)


@torch.no_grad()
def step(model: LongformerLM, caches: list[LayerCache], token: torch.Tensor, t: int) -> torch.Tensor:
    """Feed one token (B,) at position t; returns logits (B, V) for position t + 1."""
    c = model.config
    head_dim = c.d_model // c.n_head
    cos, sin = rotary_tables(torch.tensor([t], device=token.device), head_dim, c.rope_base)
    x = model.embed(token[:, None])  # (B, 1, C)
    for block, cache in zip(model.blocks, caches):
        attn = block.attn
        q, k, v = attn.project(block.ln1(x), cos, sin)  # (B, H, 1, D)
        slot = t % cache.size
        cache.k[:, :, slot] = k[:, :, 0]
        cache.v[:, :, slot] = v[:, :, 0]
        allowed = cache.allowed(t)  # (H, S)
        scores = (q.float() @ cache.k.float().transpose(-1, -2)) * head_dim**-0.5  # (B, H, 1, S)
        scores = scores.masked_fill(~allowed[None, :, None, :], float("-inf"))
        y = torch.softmax(scores, dim=-1).to(v.dtype) @ cache.v  # (B, H, 1, D)
        x = x + attn.proj(y.transpose(1, 2).reshape(x.shape))
        x = x + block.ff(block.ln2(x))
    return model.head(model.ln_f(x))[:, 0]


@torch.no_grad()
def prefill(model: LongformerLM, caches: list[LayerCache], prompt: torch.Tensor) -> torch.Tensor:
    """Run the prompt (B, T0) through the model in one parallel pass (the attention core, as in
    training), leaving each layer's last ``size`` keys/values in its ring buffer. Returns the logits
    (B, V) for position T0."""
    c = model.config
    T0 = prompt.shape[1]
    cos, sin = rotary_tables(torch.arange(T0, device=prompt.device), c.d_model // c.n_head, c.rope_base)
    x = model.embed(prompt)  # (B, T0, C)
    for block, cache in zip(model.blocks, caches):
        _, k, v = block.attn.project(block.ln1(x), cos, sin)  # (B, H, T0, D)
        kept = torch.arange(max(0, T0 - cache.size), T0, device=prompt.device)  # positions this layer still needs
        cache.k[:, :, kept % cache.size] = k[:, :, kept]
        cache.v[:, :, kept % cache.size] = v[:, :, kept]
        x = block(x, cos, sin)
    return model.head(model.ln_f(x[:, -1]))


def new_caches(model: LongformerLM, batch: int, max_len: int) -> list[LayerCache]:
    p = next(model.parameters())
    c = model.config
    return [LayerCache(batch, c.n_head, c.d_model // c.n_head, b.attn.window, b.attn.dilation, max_len, p.dtype, p.device)
            for b in model.blocks]


@torch.no_grad()
def generate(model: LongformerLM, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample a continuation. prompt (B, T0) int64, T0 >= 1 -> (B, T0 + max_new_tokens).

    temperature 0 means greedy decoding. top_k keeps the k most likely symbols before sampling.
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (B, T0) with T0 >= 1 symbols, got shape {tuple(prompt.shape)}")
    if max_new_tokens < 0:
        raise LMError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise LMError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= model.config.vocab_size:
        raise LMError(f"top_k must be in [1, {model.config.vocab_size}], got {top_k}")
    model.eval()
    B, T0 = prompt.shape
    caches = new_caches(model, B, T0 + max_new_tokens)
    out = [prompt]
    logits = prefill(model, caches, prompt)
    for i in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(dim=-1)
        else:
            scaled = logits.float() / temperature
            if top_k is not None:
                kth = scaled.topk(top_k, dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(scaled, dim=-1), 1, generator=generator)[:, 0]
        out.append(nxt[:, None])
        if i + 1 < max_new_tokens:
            logits = step(model, caches, nxt, T0 + i)
    return torch.cat(out, dim=1)
