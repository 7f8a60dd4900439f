"""The bf16 forward with bf16 pair products (vdpbf16ps on AVX512-BF16), checked on any machine.

`compiled.BF16_DOT = "always"` runs the same kernel code with the pair product emulated by two exact
fp32 FMAs in vdpbf16ps's order, so what is tested here is everything but the one instruction: the
pair layouts of keys, queries, values and probabilities, the ranges of the products, the scale
applied in the softmax and the rounding of probabilities to bf16. Where the CPU has AVX512-BF16, the
default ("native") runs the instruction itself and the last test compares the two.
"""
from __future__ import annotations

import pytest
import torch

from longformer import sliding_window_attention
from longformer.attention import _native, compiled

from attn_helpers import grads, needs_kernel
from test_blocked import check_against_reference

pytestmark = needs_kernel


@pytest.fixture
def pair_products(monkeypatch):
    monkeypatch.setattr(compiled, "BF16_DOT", "always")


def _native_bf16_dot() -> bool:
    return bool(compiled.available() and _native.load().lf_bf16_dot_native())


@pytest.mark.parametrize(
    "T,D,window,dilation,causal,globals_,padding",
    [
        (1, 8, 0, (1, 1, 1), False, "none", False),
        (7, 5, 3, (1, 2, 3), True, "many", True),  # odd D: a half-filled last pair
        (97, 16, 5, (1, 2, 3), False, "many", True),
        (97, 33, 5, (1, 1, 1), True, "one", False),  # causal, odd window: an odd span of keys
        (200, 64, 7, (1, 1, 2), True, "many", True),  # odd count of global keys (3 and 40)
        (300, 70, 64, (1, 3, 1), False, "one", True),  # D over one 2 x SIMD-width tile
        (1025, 16, 31, (2, 1, 1), False, "many", False),
    ],
)
def test_pair_products_match_reference(pair_products, T, D, window, dilation, causal, globals_, padding):
    # judged like every bf16 path: at most twice the dense bf16 reference's own error (test_blocked.py)
    check_against_reference("compiled", torch.bfloat16, 3 if padding else 2, 3, T, D, window, dilation, causal,
                            globals_, padding)


def test_pair_products_are_used_and_differ_from_widening(monkeypatch):
    """The pair path rounds probabilities to bf16 before P V, the fp32 path does not: on the same
    inputs the two outputs differ (so the switch really selects the path), by about that rounding."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 300, 32, generator=g).to(torch.bfloat16) for _ in range(3))
    kw = dict(window=20, impl="compiled")
    monkeypatch.setattr(compiled, "BF16_DOT", "never")
    widened = sliding_window_attention(q, k, v, **kw)
    monkeypatch.setattr(compiled, "BF16_DOT", "always")
    paired = sliding_window_attention(q, k, v, **kw)
    diff = (paired.float() - widened.float()).abs()
    assert diff.max() > 0
    assert diff.max() <= 4 * torch.finfo(torch.bfloat16).eps * widened.float().abs().max()


def test_pair_products_with_dropout_and_backward(pair_products):
    """Dropout's mask is applied before the rounding to pairs; the backward (fp32 products) is
    unchanged and agrees with the reference's gradients of the same mask."""
    g = torch.Generator().manual_seed(2)
    q, k, v, dout = (torch.randn(2, 3, 150, 24, generator=g).to(torch.bfloat16) for _ in range(4))
    is_global = torch.zeros(2, 150, dtype=torch.bool)
    is_global[:, [0, 77]] = True
    kw = dict(window=9, dilation=(1, 2, 1), global_attention_mask=is_global, dropout_p=0.2, dropout_seed=11)
    truth = grads("reference", q.double(), k.double(), v.double(), dout.double(), **kw)
    low = grads("reference", q, k, v, dout, **kw)
    got = grads("compiled", q, k, v, dout, **kw)
    eps = torch.finfo(torch.bfloat16).eps
    for name, t, lo, x in zip(("out", "dq", "dk", "dv"), truth, low, got):
        allowed = 2 * (lo.double() - t).abs().max() + eps / 2 * (1 + t.abs().max())
        assert (x.double() - t).abs().max() <= allowed, name


def test_bad_setting_is_refused(monkeypatch):
    monkeypatch.setattr(compiled, "BF16_DOT", "sometimes")
    q = torch.randn(1, 1, 80, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"BF16_DOT.*must be one of"):
        sliding_window_attention(q, q, q, 4, impl="compiled")


@pytest.mark.skipif(not _native_bf16_dot(), reason="this CPU has no AVX512-BF16: the instruction itself is not run")
def test_native_instruction_matches_emulation(monkeypatch):
    """vdpbf16ps against its emulation in a build without AVX512-BF16 (same SIMD width and tiles).
    Intel specifies the same two roundings in the same order; allow one bf16 ulp of the output in
    case a CPU rounds the pair sum once."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 1000, 64, generator=g).to(torch.bfloat16) for _ in range(3))
    is_global = torch.zeros(2, 1000, dtype=torch.bool)
    is_global[:, :3] = True
    kw = dict(window=100, dilation=(1, 2, 1, 3), global_attention_mask=is_global, impl="compiled")
    native = sliding_window_attention(q, k, v, **kw)
    monkeypatch.setattr(compiled, "BF16_DOT", "always")
    monkeypatch.setattr(_native, "FLAGS", [*_native.FLAGS, "-mno-avx512bf16"])
    _native.forget()
    try:
        assert not _native.load().lf_bf16_dot_native(), _native.status().reason
        emulated = sliding_window_attention(q, k, v, **kw)
    finally:
        monkeypatch.undo()
        _native.forget()  # the next load is the default build again
    torch.testing.assert_close(native, emulated, atol=0, rtol=torch.finfo(torch.bfloat16).eps)
