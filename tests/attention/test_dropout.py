"""Attention-probability dropout: the compiled, blocked and flex kernels apply exactly the reference's hash
mask (outputs and gradients), the mask has the right rate and no bias, and seeds behave."""
from __future__ import annotations

import pytest
import torch

from longformer import sliding_window_attention
from longformer.attention import compiled
from longformer.attention.dropout import dense_keep_factor, keep_blocks, keep_factor, threshold

from attn_helpers import grads, needs_kernel


@pytest.mark.parametrize("impl", ["compiled", "blocked", "flex"])
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dilation,causal,globals_,padding", [
    ((1, 1), False, False, False),
    ((1, 3), True, True, True),
    ((2, 1), False, True, True),
    ((2, 2, 1), True, True, False),  # two heads in one dilation group: sequences interleave heads and residues
])
def test_fast_kernels_apply_the_reference_mask(impl, p, dilation, causal, globals_, padding):
    if impl == "compiled" and not compiled.available():
        pytest.skip("no C++ compiler: the compiled kernel is not built")
    g = torch.Generator().manual_seed(7)
    B, H, T, D = 2, len(dilation), 130, 8
    q, k, v, dout = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    kw = dict(window=6, dilation=dilation, causal=causal, dropout_p=p, dropout_seed=99)
    if padding:
        kw["attention_mask"] = torch.rand(B, T, generator=g) > 0.15
    if globals_:
        is_global = torch.zeros(B, T, dtype=torch.bool)
        is_global[0, [0, 64]] = True
        is_global[1, 129] = True
        kw["global_attention_mask"] = is_global
    truth = grads("reference", q.double(), k.double(), v.double(), dout.double(), **kw)
    got = grads(impl, q, k, v, dout, **kw)
    for name, t, x in zip(("out", "dq", "dk", "dv"), truth, got):
        torch.testing.assert_close(x.double(), t, atol=3e-5, rtol=3e-5, msg=name)


def test_auto_keeps_dropout_memory_linear_where_the_compiled_kernel_does_not_run():
    """fp64 (or a GPU, or no compiler) takes the blocked kernel, with dropout as everywhere else:
    no T x T fallback. Checked by the equality with blocked and the reference."""
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 2, 400, 8, generator=g, dtype=torch.float64) for _ in range(3))
    kw = dict(window=16, dropout_p=0.25, dropout_seed=3)
    auto = sliding_window_attention(q, k, v, **kw)
    assert torch.equal(auto, sliding_window_attention(q, k, v, impl="blocked", **kw))
    # (the reference's softmax is fp32 even for fp64 inputs)
    torch.testing.assert_close(auto, sliding_window_attention(q, k, v, impl="reference", **kw), atol=1e-6, rtol=0)


@needs_kernel
def test_bf16_dropout_matches_reference_within_rounding():
    g = torch.Generator().manual_seed(8)
    q, k, v, dout = (torch.randn(1, 2, 90, 16, generator=g) for _ in range(4))
    kw = dict(window=5, dropout_p=0.2, dropout_seed=5)
    truth = grads("reference", q.double(), k.double(), v.double(), dout.double(), **kw)
    got = grads("compiled", *(t.bfloat16() for t in (q, k, v, dout)), **kw)
    for t, x in zip(truth, got):
        assert x.dtype == torch.bfloat16
        assert (x.double() - t).abs().max().item() <= 0.02 * (1 + t.abs().max().item())


def _fmix32(x: int) -> int:
    x ^= x >> 16
    x = x * 0x85EBCA6B & 0xFFFFFFFF
    x ^= x >> 13
    x = x * 0xC2B2AE35 & 0xFFFFFFFF
    return x ^ (x >> 16)


@pytest.mark.parametrize("seed", [0, 7, 0x80000001, 0xFFFFFFFF])
def test_torch_hash_is_the_documented_formula(seed):
    """keep_factor and keep_blocks (int32 tensors with wrapping arithmetic) against the formula of
    dropout.py's docstring in plain Python integers, thresholds near both ends included."""
    B, H = 3, 5
    rows, cols = torch.tensor([0, 1, 977, 65535, 1 << 20]), torch.tensor([0, 3, 4096, 70000, (1 << 31) - 1])
    for p in (0.001, 0.3, 0.999):
        thr = threshold(p)
        for b in range(B):
            got = keep_factor(seed, thr, b, H, rows, cols)
            blocks = keep_blocks(seed, thr, torch.full((1,), b * H + 2), rows[None], cols[None])[0]
            assert torch.equal(blocks, got[2])
            for h in range(H):
                head = _fmix32(seed ^ ((b * H + h) * 0x9E3779B1 & 0xFFFFFFFF))
                for x, i in enumerate(rows.tolist()):
                    row = _fmix32(head ^ (i * 0x85EBCA77 & 0xFFFFFFFF))
                    for y, j in enumerate(cols.tolist()):
                        kept = _fmix32((row + j * 0xC2B2AE3D) & 0xFFFFFFFF) >= thr
                        assert (got[h, x, y].item() > 0) == kept, (p, b, h, i, j)


def test_mask_rate_and_scale():
    for p in (0.1, 0.3, 0.7):
        keep = dense_keep_factor(seed=3, thr=threshold(p), B=2, H=3, T=200, device="cpu")
        kept = (keep > 0).double().mean().item()
        assert abs(kept - (1 - p)) < 0.01, (p, kept)
        assert torch.allclose(keep[keep > 0], torch.tensor(1 / (1 - p), dtype=torch.float32))
    a = dense_keep_factor(seed=3, thr=threshold(0.5), B=1, H=2, T=64, device="cpu")
    assert not torch.equal(a[0, 0], a[0, 1]), "heads must get different masks"
    assert not torch.equal(a, dense_keep_factor(seed=4, thr=threshold(0.5), B=1, H=2, T=64, device="cpu"))


@needs_kernel
def test_unbiased_on_average():
    """The mean over many seeds approaches the output without dropout (kept values are rescaled)."""
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 1, 64, 4, generator=g) for _ in range(3))
    plain = sliding_window_attention(q, k, v, 8, impl="compiled")
    mean = torch.stack([sliding_window_attention(q, k, v, 8, dropout_p=0.3, dropout_seed=s, impl="compiled")
                        for s in range(400)]).mean(0)
    assert (mean - plain).abs().mean().item() < 0.05 * plain.abs().mean().item()


@needs_kernel
def test_seeds():
    q = torch.randn(1, 2, 80, 8)
    f = lambda **kw: sliding_window_attention(q, q, q, 4, dropout_p=0.4, impl="compiled", **kw)  # noqa: E731
    assert torch.equal(f(dropout_seed=1), f(dropout_seed=1))
    assert not torch.equal(f(dropout_seed=1), f(dropout_seed=2))
    torch.manual_seed(0)
    a = f()
    torch.manual_seed(0)
    assert torch.equal(a, f()), "the default seed comes from torch's generator"


def test_bad_dropout_arguments():
    q = torch.randn(1, 1, 10, 4)
    with pytest.raises(ValueError, match="dropout_p"):
        sliding_window_attention(q, q, q, 2, dropout_p=1.0)
    with pytest.raises(ValueError, match="dropout_p"):
        sliding_window_attention(q, q, q, 2, dropout_p=-0.1)
