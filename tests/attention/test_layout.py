"""q, k and v in the layouts the layers pass them: (B, H, T, D) views of (B, T, H, D) projections, also
slices of one fused q/k/v projection, and the output and gradients in that memory order.

The compiled kernel reads every array at its own strides: its results on strided inputs must equal
its results on contiguous copies bit for bit (same arithmetic, same order), with dropout too, and
both must match the dense reference. Every other implementation must accept the same inputs.
"""
from __future__ import annotations

import pytest
import torch

from longformer import sliding_window_attention
from longformer.attention import IMPLS, compiled

from attn_helpers import needs_kernel

FAST_IMPLS = [impl for impl in IMPLS if impl not in ("auto", "reference")]


def projections(B, T, H, D, dtype, fused, seed):
    """Leaf tensors shaped like a layer's projection outputs, and q, k, v as (B, H, T, D) views of them."""
    g = torch.Generator().manual_seed(seed)
    if fused:  # one (B, T, 3 * H * D) projection, split like the char LM's qkv
        x = torch.randn(B, T, 3 * H * D, generator=g).to(dtype).requires_grad_(True)
        views = x.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        return [x], (views[0], views[1], views[2])
    xs = [torch.randn(B, T, H * D, generator=g).to(dtype).requires_grad_(True) for _ in range(3)]
    return xs, tuple(x.view(B, T, H, D).transpose(1, 2) for x in xs)


def masks(B, T, globals_, padding, seed):
    g = torch.Generator().manual_seed(seed + 7)
    key_valid = torch.rand(B, T, generator=g) > 0.2 if padding else None
    is_global = None
    if globals_:
        is_global = torch.zeros(B, T, dtype=torch.bool)
        is_global[:, [0, T // 2]] = True
        is_global[-1, T - 1] = True  # a different count per batch element
    return key_valid, is_global


def outputs(impl, leaves, qkv, dout, **kw):
    """Output and the gradients of the leaves."""
    out = sliding_window_attention(*qkv, impl=impl, **kw)
    grads = torch.autograd.grad(out, leaves, dout)
    return out, grads


CASES = [  # T, D, window, dilation, causal, globals, padding, dropout, fused
    (97, 24, 5, (1, 2, 3), False, True, True, 0.0, False),
    (97, 24, 5, (1, 2, 3), True, True, True, 0.0, True),
    (130, 17, 9, (1, 1, 2), False, False, True, 0.0, False),  # odd D
    (65, 8, 70, (1, 1, 1), True, True, False, 0.0, True),  # window > T
    (101, 16, 4, (2, 1, 3), False, True, True, 0.3, False),  # dropout
    (101, 16, 4, (1, 1, 1), True, False, False, 0.3, True),
    (1, 8, 3, (1, 1, 1), False, True, False, 0.0, False),
]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("T,D,window,dilation,causal,globals_,padding,p,fused", CASES)
def test_strided_projections_match_the_reference(impl, T, D, window, dilation, causal, globals_, padding, p, fused):
    if impl == "export" and p:
        pytest.skip("impl='export' has no attention dropout by design (an inference-graph kernel)")
    B, H = 2, 3
    leaves, qkv = projections(B, T, H, D, torch.float32, fused, seed=T + D)
    key_valid, is_global = masks(B, T, globals_, padding, seed=T)
    dout = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1))
    kw = dict(window=window, dilation=dilation, causal=causal, attention_mask=key_valid, global_attention_mask=is_global,
              dropout_p=p, dropout_seed=11)
    # the truth: the reference on float64 contiguous copies (the same dropout hash mask)
    leaves64, qkv64 = projections(B, T, H, D, torch.float64, fused, seed=T + D)
    truth, truth_grads = outputs("reference", leaves64, [t.contiguous() for t in qkv64], dout.double(), **kw)
    out, got_grads = outputs(impl, leaves, qkv, dout, **kw)
    scale = 1.0 + truth.abs().max().item()
    torch.testing.assert_close(out.double(), truth, atol=2e-5 * scale, rtol=0)
    for g, t in zip(got_grads, truth_grads):
        assert g.shape == t.shape
        torch.testing.assert_close(g.double(), t, atol=2e-5 * (1.0 + t.abs().max().item()), rtol=0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_compiled_strided_equals_contiguous_bitwise(dtype, fused, p):
    """The same arithmetic whatever the layout: strided inputs give exactly the contiguous output (and
    the same gradients), and the output comes back in (B, T, H, D) memory (the layer's reshape is a view)."""
    B, H, T, D = 2, 4, 150, 40
    leaves, qkv = projections(B, T, H, D, dtype, fused, seed=5)
    key_valid, is_global = masks(B, T, True, True, seed=3)
    kw = dict(window=13, dilation=(1, 2, 1, 3), attention_mask=key_valid, global_attention_mask=is_global,
              dropout_p=p, dropout_seed=4)
    dout = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(2)).to(dtype).transpose(1, 2)
    out, grads = outputs("compiled", leaves, qkv, dout, **kw)
    assert out.transpose(1, 2).is_contiguous(), "the output should be (B, T, H, D) memory"
    assert out.transpose(1, 2).reshape(B, T, H * D).data_ptr() == out.data_ptr()  # a view, no copy
    flat = [t.detach().contiguous().requires_grad_(True) for t in qkv]
    ref_out, ref_grads = outputs("compiled", flat, flat, dout.contiguous(), **kw)
    assert ref_out.is_contiguous()
    assert torch.equal(out, ref_out)
    # the leaves' gradients are the contiguous inputs' gradients in the projections' layout. Not
    # bitwise: the global keys' gradients (shared by a head's dilated residues) and part 3's dq are
    # summed under a lock in whatever order the threads arrive, so the last bits may differ run to run
    if fused:
        pairs = [(grads[0], torch.stack(ref_grads).permute(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D))]
    else:
        pairs = [(g, r.transpose(1, 2).reshape(B, T, H * D)) for g, r in zip(grads, ref_grads)]
    for g, want in pairs:
        tol = 4 * torch.finfo(dtype).eps * (1.0 + want.abs().max().item())
        torch.testing.assert_close(g.double(), want.double(), atol=tol, rtol=0)


@needs_kernel
def test_compiled_op_strided_fake_matches_real():
    """The custom op's fake (shape and stride) rule agrees with the kernel on strided inputs."""
    _, (q, k, v) = projections(2, 70, 2, 8, torch.float32, fused=True, seed=0)
    q, k, v = (t.detach() for t in (q, k, v))
    is_global = torch.zeros(2, 70, dtype=torch.bool)
    is_global[:, 0] = True
    key_valid = torch.ones(2, 70, dtype=torch.bool)
    key_valid[1, 60:] = False
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))  # 16-bit strided inputs are copied for the kernel
    for args in ((q, k, v, key_valid, is_global, 6, [1, 2], False, 0.3, 0.0, 0),
                 (q.contiguous(), k, v, None, None, 3, [1, 1], True, 0.5, 0.2, 9),
                 (qb, kb, vb, key_valid, is_global, 6, [1, 2], False, 0.3, 0.0, 0)):
        torch.library.opcheck(compiled.band_attention, args)
