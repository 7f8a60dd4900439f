"""Argument checking of sliding_window_attention and a brute-force check of the reference itself."""
import math

import pytest
import torch

from longformer import sliding_window_attention
from longformer.attention import reference_attention


def qkv(B=2, H=3, T=11, D=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=dtype) for _ in range(3)]


def brute_force(q, k, v, window, dilation, causal, key_valid, is_global):
    """Row by row, straight from DESIGN.md, in float64 loops."""
    B, H, T, D = q.shape
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            r = dilation[h]
            for i in range(T):
                keys = []
                for j in range(T):
                    d = j - i
                    ok = (d % r == 0 and abs(d) <= window * r)
                    if is_global is not None:
                        ok = ok or bool(is_global[b, i]) or bool(is_global[b, j])
                    if causal:
                        ok = ok and j <= i
                    if key_valid is not None:
                        ok = ok and bool(key_valid[b, j])
                    if ok:
                        keys.append(j)
                if not keys:
                    continue
                s = torch.stack([q[b, h, i].double() @ k[b, h, j].double() / math.sqrt(D) for j in keys])
                p = torch.softmax(s, 0)
                out[b, h, i] = (p[:, None] * v[b, h, keys].double()).sum(0)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,dilation", [(0, (1, 1, 1)), (1, (1, 2, 3)), (2, (2, 2, 1)), (20, (1, 1, 1))])
def test_reference_matches_brute_force(window, dilation, causal):
    q, k, v = qkv()
    key_valid = torch.ones(2, 11, dtype=torch.bool)
    key_valid[1, 7:] = False
    key_valid[0, 3] = False
    is_global = torch.zeros(2, 11, dtype=torch.bool)
    is_global[0, 0] = is_global[0, 5] = is_global[1, 10] = True
    got = reference_attention(q, k, v, window, dilation, causal, key_valid, is_global, 4**-0.5)
    want = brute_force(q, k, v, window, dilation, causal, key_valid, is_global)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_fully_padded_rows_are_zero_with_finite_gradients():
    q, k, v = qkv(B=1, H=1, T=5)
    for t in (q, k, v):
        t.requires_grad_(True)
    mask = torch.zeros(1, 5, dtype=torch.long)
    out = sliding_window_attention(q, k, v, 2, attention_mask=mask, impl="reference")
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def _call(**overrides):
    q, k, v = qkv()
    kwargs = dict(q=q, k=k, v=v, window=2)
    kwargs.update(overrides)
    return sliding_window_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), kwargs.pop("window"), **kwargs)


@pytest.mark.parametrize(
    "overrides,error,words",
    [
        (dict(q=torch.randn(3, 11, 4)), ValueError, ["q", "(B, H, T, D)", "(3, 11, 4)"]),
        (dict(k=torch.randn(2, 3, 12, 4)), ValueError, ["same shape", "k (2, 3, 12, 4)"]),
        (dict(v=torch.randn(2, 3, 11, 5)), ValueError, ["same shape"]),
        (dict(q=torch.randn(2, 3, 11, 4, dtype=torch.float64)), TypeError, ["dtype"]),
        (dict(q=torch.ones(2, 3, 11, 4, dtype=torch.long)), TypeError, ["floating"]),
        (dict(q="not a tensor"), TypeError, ["q", "torch.Tensor"]),
        (dict(window=-1), ValueError, ["window", ">= 0", "-1"]),
        (dict(window=2.5), TypeError, ["window", "int"]),
        (dict(dilation=0), ValueError, ["dilation", ">= 1"]),
        (dict(dilation=(1, 2)), ValueError, ["dilation", "H=3", "2 values"]),
        (dict(dilation=(1, 2, 0)), ValueError, ["dilation", ">= 1"]),
        (dict(dilation="2"), TypeError, ["dilation"]),
        (dict(causal=1), TypeError, ["causal", "bool"]),
        (dict(attention_mask=torch.ones(2, 10)), ValueError, ["attention_mask", "(2, 11)", "(2, 10)"]),
        (dict(attention_mask=torch.full((2, 11), 2)), ValueError, ["attention_mask", "0 and 1", "2"]),
        (dict(global_attention_mask=torch.ones(11)), ValueError, ["global_attention_mask", "(B, T)"]),
        (dict(global_attention_mask=torch.full((2, 11), -1.0)), ValueError, ["global_attention_mask", "0 and 1"]),
        (dict(attention_mask=[[1] * 11] * 2), TypeError, ["attention_mask", "torch.Tensor"]),
        (dict(impl="cuda-magic"), ValueError, ["impl", "cuda-magic", "reference"]),
    ],
)
def test_bad_input_is_named(overrides, error, words):
    with pytest.raises(error) as info:
        _call(**overrides)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_masks_accept_bool_int_and_float():
    q, k, v = qkv()
    m = torch.ones(2, 11)
    m[0, -2:] = 0
    outs = [
        sliding_window_attention(q, k, v, 2, attention_mask=mask, impl="reference")
        for mask in (m, m.long(), m.bool())
    ]
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2])
