"""Every fast implementation against the dense reference: outputs and gradients of q, k and v.

The truth is the reference run on float64 copies of the inputs. A fast kernel run in dtype X may be
off the truth by at most twice what the reference itself is off when run in X (plus a tiny floor):
low precision is judged against low precision's own error, never against a fixed atol.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longformer import sliding_window_attention
from longformer.attention import IMPLS
from longformer.attention.blocked import blocked_attention

# flex runs this grid in test_flex.py (its eager CPU path is the slowest, so it keeps its own marks)
FAST_IMPLS = [impl for impl in IMPLS if impl not in ("auto", "reference", "flex")]
# The absolute floor, relative to the largest true value: for fp32 a few ulps of accumulated
# summation error; for bf16/fp16 half an ulp, i.e. one rounding of the result to the dtype. The
# blocked backward computes delta = sum(dout * out) from the output as returned (rounded), as
# flash-attention does, so rows with one or two keys (where the reference is nearly exact) carry
# about that one rounding.
FLOOR = {torch.float32: 2e-5, torch.bfloat16: torch.finfo(torch.bfloat16).eps / 2, torch.float16: torch.finfo(torch.float16).eps / 2}


def make_inputs(B, H, T, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(dtype) for _ in range(3))
    dout = torch.randn(B, H, T, D, generator=g).to(dtype)
    return q, k, v, dout


def make_masks(B, T, globals_, padding, seed):
    """Bool key-valid and global masks (or None). Batch element 2 (if any) is fully padded."""
    g = torch.Generator().manual_seed(seed + 1)
    key_valid = None
    if padding:
        key_valid = torch.rand(B, T, generator=g) > 0.2
        if B > 1:
            key_valid[1, : max(1, T // 3)] = False  # left padding: early causal rows see nothing
        if B > 2:
            key_valid[2] = False  # a fully padded element: every row is 0
    is_global = None
    if globals_ == "one":
        is_global = torch.zeros(B, T, dtype=torch.bool)
        is_global[:, 0] = True
    elif globals_ == "many":
        is_global = torch.zeros(B, T, dtype=torch.bool)
        is_global[0, [0, T // 2, T - 1]] = True  # first, middle, last
        if B > 1:
            is_global[1, torch.randperm(T, generator=g)[: max(1, T // 5)]] = True  # a different count
    return key_valid, is_global


def run(impl, q, k, v, dout, window, dilation, causal, key_valid, is_global):
    """Output and (dq, dk, dv) of one implementation on leaf copies of the inputs."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = sliding_window_attention(
        q, k, v, window, dilation=dilation, causal=causal, attention_mask=key_valid,
        global_attention_mask=is_global, impl=impl,
    )
    out.backward(dout)
    return [out.detach(), q.grad, k.grad, v.grad]


def check_against_reference(impl, dtype, B, H, T, D, window, dilation, causal, globals_, padding, seed=0, device="cpu"):
    q, k, v, dout = (t.to(device) for t in make_inputs(B, H, T, D, dtype, seed))
    key_valid, is_global = (None if m is None else m.to(device) for m in make_masks(B, T, globals_, padding, seed))
    args = (window, dilation, causal, key_valid, is_global)
    truth = run("reference", q.double(), k.double(), v.double(), dout.double(), *args)
    got = run(impl, q, k, v, dout, *args)
    ref_low = run("reference", q, k, v, dout, *args) if dtype != torch.float32 else None
    for name, t, g in zip(("out", "dq", "dk", "dv"), truth, got):
        assert g.dtype == dtype and g.shape == t.shape, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        err = (g.double() - t).abs().max().item()
        floor = FLOOR[dtype] * (1.0 + t.abs().max().item())
        allowed = floor if ref_low is None else 2 * (ref_low[("out", "dq", "dk", "dv").index(name)].double() - t).abs().max().item() + floor
        assert err <= allowed, f"{impl} {name}: max error {err:.3g} > allowed {allowed:.3g}"
    if key_valid is not None and B > 2:
        assert torch.equal(got[0][2], torch.zeros_like(got[0][2])), "fully padded rows must be exactly 0"


def grid():
    """(T, window, dilation, causal, globals, padding, dtype) covering every axis of the spec.

    The full product at T=7; at T=97 all but window 0; at T=1 only the distinct windows; at T=1025
    a few mixed cases (small D, B and H so that the dense reference stays cheap).
    """
    windows = {"zero": 0, "one": 1, "small": 3, "ge_T": None}
    per_T = {1: ("zero", "ge_T"), 7: tuple(windows), 97: ("one", "small", "ge_T")}
    cases = []
    for T, kinds in per_T.items():
        for kind, dilation, causal, globals_, padding in itertools.product(
            kinds, ((1, 1, 1), (1, 2, 3)), (False, True), ("none", "one", "many"), (False, True)
        ):
            window = T + 2 if kind == "ge_T" else windows[kind]
            if T == 1 and dilation == (1, 1, 1):
                continue  # the same single key whatever the dilation
            cases.append((T, window, dilation, causal, globals_, padding, torch.float32))
    cases += [
        (1025, 0, (1, 1, 1), False, "none", False, torch.float32),
        (1025, 1, (1, 2, 3), True, "one", False, torch.float32),
        (1025, 3, (1, 2, 3), False, "many", True, torch.float32),
        (1025, 3, (1, 2, 3), True, "many", True, torch.float32),
        (1025, 16, (1, 1, 1), False, "one", True, torch.float32),
        (1025, 16, (4, 1, 1), True, "none", True, torch.float32),
    ]
    # low precision: every feature at once, and the plain band, at each length
    for T, dtype, causal in itertools.product((1, 7, 97), (torch.bfloat16, torch.float16), (False, True)):
        cases.append((T, 5, (1, 2, 3), causal, "many", True, dtype))
        cases.append((T, 5, (1, 1, 1), causal, "none", False, dtype))
    cases.append((1025, 5, (1, 2, 3), True, "one", True, torch.bfloat16))
    cases.append((1025, 5, (2, 1, 1), False, "many", False, torch.float16))
    return cases


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("T,window,dilation,causal,globals_,padding,dtype", grid())
def test_matches_reference(impl, T, window, dilation, causal, globals_, padding, dtype):
    B = 3 if (padding or globals_ == "many") else 1
    D = 8 if T >= 1025 else 16
    check_against_reference(impl, dtype, B, len(dilation), T, D, window, dilation, causal, globals_, padding)


@pytest.mark.slow
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,window", [(2049, 256), (4099, 64), (1025, 1025)])
def test_matches_reference_large(impl, T, window, causal, dtype):
    check_against_reference(impl, dtype, 2, 4, T, 64, window, (1, 2, 1, 4), causal, "many", True)


# random patterns: also drawn by test_flex.py, with fewer examples
RANDOM_PATTERN = dict(
    B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 80), D=st.integers(1, 9),
    window=st.integers(0, 40), max_r=st.integers(1, 6), causal=st.booleans(),
    p_global=st.sampled_from([0.0, 0.05, 0.3]), p_pad=st.sampled_from([0.0, 0.2, 1.0]),
    seed=st.integers(0, 2**16),
)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@settings(max_examples=25, deadline=None)
@given(**RANDOM_PATTERN)
def test_random_patterns(impl, B, H, T, D, window, max_r, causal, p_global, p_pad, seed):
    check_random_pattern(impl, B, H, T, D, window, max_r, causal, p_global, p_pad, seed)


def check_random_pattern(impl, B, H, T, D, window, max_r, causal, p_global, p_pad, seed):
    g = torch.Generator().manual_seed(seed)
    dilation = tuple(int(r) for r in torch.randint(1, max_r + 1, (H,), generator=g))
    key_valid = torch.rand(B, T, generator=g) >= p_pad
    is_global = torch.rand(B, T, generator=g) < p_global
    q, k, v, dout = make_inputs(B, H, T, D, torch.float32, seed)
    args = (window, dilation, causal, key_valid, is_global)
    truth = run("reference", q.double(), k.double(), v.double(), dout.double(), *args)
    for name, t, got in zip(("out", "dq", "dk", "dv"), truth, run(impl, q, k, v, dout, *args)):
        torch.testing.assert_close(got.double(), t, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,window,dilation", [(1, 0, (1,)), (6, 1, (1, 2)), (9, 2, (3, 1)), (5, 9, (2,))])
def test_gradcheck_float64(T, window, dilation, causal):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, len(dilation), T, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    key_valid = torch.ones(2, T, dtype=torch.bool)
    key_valid[1, -1] = False
    is_global = torch.zeros(2, T, dtype=torch.bool)
    is_global[0, T // 2] = True

    def f(q, k, v):
        return blocked_attention(q, k, v, window, dilation, causal, key_valid, is_global, 0.7)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, fast_mode=True)


def test_saves_only_inputs_output_and_lse():
    """Memory-linear backward: nothing of size T x window (or T x T) is kept for backward."""
    B, H, T, D = 1, 2, 300, 8
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    is_global = torch.zeros(B, T, dtype=torch.bool)
    is_global[0, 5] = True
    out = blocked_attention(q, k, v, 50, (1, 2), False, None, is_global, 0.3)
    saved = [t for t in out.grad_fn.saved_tensors if isinstance(t, torch.Tensor)]
    assert sum(t.numel() for t in saved) <= 4 * B * H * T * D + B * H * T


def test_no_nan_and_accurate_with_huge_scores():
    """Scores in the thousands: max subtraction keeps exp finite and the output accurate."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 4, generator=g) * 30 for _ in range(3))
    out = blocked_attention(q, k, v, 3, (1, 2), False, None, None, 1.0)
    assert torch.isfinite(out).all()
    want = sliding_window_attention(q.double(), k.double(), v.double(), 3, dilation=(1, 2), scale=1.0, impl="reference")
    torch.testing.assert_close(out.double(), want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("T", [10, 300])
def test_auto_matches_reference(T):
    """Whatever "auto" dispatches to (reference for tiny inputs, blocked beyond) is exact."""
    check_against_reference("auto", torch.float32, 2, 2, T, 8, 7, (1, 2), True, "many", True)
