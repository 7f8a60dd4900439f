"""LongformerSelfAttention against a short dense statement of the paper's layer (with dilation, which
transformers lacks): forward and gradients, every attention implementation, awkward shapes."""
from __future__ import annotations

import math

import pytest
import torch

from longformer.encoder.attention import LongformerSelfAttention


def dense_layer(m: LongformerSelfAttention, x, valid, glob, window, dilation):
    """Local rows: window (dilated per head) + global keys, local projections. Global rows: every valid key,
    global projections. Padded rows: 0. Written from DESIGN.md with plain T x T masks."""
    B, T, C = x.shape
    H, D = m.num_heads, C // m.num_heads
    valid = torch.ones(B, T, dtype=torch.bool) if valid is None else valid
    glob = torch.zeros(B, T, dtype=torch.bool) if glob is None else glob & valid

    def heads(t):
        return t.view(B, T, H, D).transpose(1, 2)

    def attend(q, k, v, allowed):
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
        return p @ v

    d = torch.arange(T)[None, :] - torch.arange(T)[:, None]
    r = torch.tensor([dilation] * H if isinstance(dilation, int) else dilation)[:, None, None]
    band = (d % r == 0) & (d.abs() <= window * r)  # (H, T, T)
    local = (band[None] | glob[:, None, None, :]) & valid[:, None, None, :]
    out = attend(heads(m.query(x)), heads(m.key(x)), heads(m.value(x)), local)
    full = valid[:, None, None, :].expand(B, H, T, T)
    g_out = attend(heads(m.query_global(x)), heads(m.key_global(x)), heads(m.value_global(x)), full)
    out = torch.where(glob[:, None, :, None], g_out, out)
    out = out.masked_fill(~valid[:, None, :, None], 0.0)
    return out.transpose(1, 2).reshape(B, T, C)


CASES = [  # T, window, dilation, padded lengths, global positions per row
    (1, 2, 1, None, [[0], []]),
    (13, 0, 1, [13, 9], [[], [2]]),
    (13, 3, [1, 2, 3, 1], [13, 6], [[0, 12], [5, 10]]),
    (97, 4, [1, 1, 2, 4], [97, 70], [[0, 50, 96], [69, 80]]),
    (97, 5, 1, None, [[], []]),
]


@pytest.mark.parametrize("impl", ["reference", "blocked", "compiled"])
@pytest.mark.parametrize("T,window,dilation,lengths,globals_", CASES)
def test_layer_attention_matches_dense_statement(impl, T, window, dilation, lengths, globals_):
    torch.manual_seed(T + window)
    m = LongformerSelfAttention(32, 4, window, dilation, impl=impl)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, T, 32, requires_grad=True)
    valid = None if lengths is None else torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    glob = torch.zeros(2, T, dtype=torch.bool)
    for b, positions in enumerate(globals_):
        glob[b, positions] = True
    glob = glob if glob.any() else None
    out = m(x, valid, glob)
    want = dense_layer(m, x, valid, glob, window, dilation)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, [x, *m.parameters()], grad_out)
    want_grads = torch.autograd.grad(want, [x, *m.parameters()], grad_out, allow_unused=True)
    want_grads = [torch.zeros_like(g) if w is None else w for g, w in zip(got_grads, want_grads)]
    # Gradients sum many fp32 terms that may cancel (key.bias's true gradient is exactly 0): the
    # tolerance follows the size of the largest gradient entry of the layer.
    scale = max(w.abs().max().item() for w in want_grads)
    for name, g, w in zip(["x", *(n for n, _ in m.named_parameters())], got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=2e-6 * max(1.0, scale), msg=lambda e: f"{name}: {e}")
