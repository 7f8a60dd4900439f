"""LongformerSelfAttention against a short dense statement of the paper's layer (with dilation, which
transformers lacks): forward and gradients, every attention implementation, awkward shapes."""
from __future__ import annotations

import math

import pytest
import torch

from longformer.encoder.attention import LongformerSelfAttention, folded_global_rows, folding_pays


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
    # 13 global tokens in row 0: past folding_pays (G (H - 1) < C), so the global rows take the
    # projected path; every case above takes the folded one
    (97, 4, [1, 2, 1, 1], [97, 70], [list(range(0, 97, 8)), [3, 69, 80]]),
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


def test_the_new_case_takes_the_projected_path():
    assert folding_pays(3, 4, 32) and not folding_pays(13, 4, 32)
    assert folding_pays(69, 12, 768) and not folding_pays(70, 12, 768)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_folded_global_rows_equal_projected(dtype, bias, dropout):
    """The folded formulation against attention over key(hidden), value(hidden): padding, a row with
    no valid key (0 out), no bias, dropout (the same draw: both drop on (B, H, G, T) probabilities),
    forward and gradients."""
    torch.manual_seed(0)
    B, T, C, H, G = 3, 29, 24, 3, 4
    D = C // H
    key, value = (torch.nn.Linear(C, C, bias=bias).to(dtype) for _ in range(2))
    hidden = torch.randn(B, T, C, dtype=dtype, requires_grad=True)
    q = torch.randn(B, H, G, D, dtype=dtype, requires_grad=True)
    valid = torch.arange(T)[None] < torch.tensor([T, 11, 0])[:, None]

    def projected():
        k, v = (m(hidden).view(B, T, H, D).transpose(1, 2) for m in (key, value))
        s = (q @ k.transpose(-1, -2)) * D**-0.5
        p = torch.softmax(s.masked_fill(~valid[:, None, None, :], float("-inf")), -1).nan_to_num(0.0)
        return torch.nn.functional.dropout(p, dropout, training=True) @ v

    named = [("hidden", hidden), ("q", q), *(("key." + n, t) for n, t in key.named_parameters()),
             *(("value." + n, t) for n, t in value.named_parameters())]
    params = [t for _, t in named]
    torch.manual_seed(1)
    got = folded_global_rows(q, hidden, key, value, valid, D**-0.5, dropout)
    torch.manual_seed(1)
    want = projected()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, want, **tol)
    assert got[2].abs().max() == 0  # the row with no valid key
    grad = torch.randn_like(got)
    for (name, _), g, w in zip(named, torch.autograd.grad(got, params, grad),
                          torch.autograd.grad(want, params, grad)):
        torch.testing.assert_close(g, w, **tol, msg=lambda e: f"{name}: {e}")
