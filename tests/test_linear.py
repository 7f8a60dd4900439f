"""`longformer.linear.linear`: the fused oneDNN path agrees with F.linear + activation + residual, and is
taken exactly where it may be (inference on the CPU), never under autograd or tracing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longformer import linear as lin
from longformer.linear import ACTIVATIONS, fused_path, linear

needs_onednn = pytest.mark.skipif(not lin._onednn_available(), reason="this torch build has no oneDNN linear op")
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def reference(x, layer, activation=None, residual=None):
    y = F.linear(x.double(), layer.weight.double(), layer.bias.double() if layer.bias is not None else None)
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y if residual is None else y + residual.double()


def make(in_f, out_f, bias=True, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Linear(in_f, out_f, bias=bias).to(dtype)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_new", "relu", "silu", "tanh", "sigmoid", "quick_gelu",
                                        "mish", "gelu_python"])
def test_fused_matches_reference(dtype, activation):
    layer = make(37, 53, dtype=dtype)
    x = torch.randn(2, 19, 37).to(dtype)
    with torch.inference_mode():
        assert fused_path(x, layer)
        got = linear(x, layer, activation)
    want = reference(x, layer, activation)
    assert got.dtype == dtype and got.shape == (2, 19, 53)
    scale = want.abs().max().item()
    assert (got.double() - want).abs().max().item() <= TOL[dtype] * max(1.0, scale)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_residual(dtype, bias):
    layer = make(64, 24, bias=bias, dtype=dtype)
    x, residual = torch.randn(3, 7, 64).to(dtype), torch.randn(3, 7, 24).to(dtype)
    with torch.no_grad():
        got = linear(x, layer, residual=residual)
    want = reference(x, layer, residual=residual)
    assert (got.double() - want).abs().max().item() <= TOL[dtype] * max(1.0, want.abs().max().item())


@needs_onednn
def test_awkward_inputs():
    """A transposed (non-contiguous) input, a 2-D input, a broadcast residual (not fused, still right)."""
    layer = make(16, 8)
    x = torch.randn(5, 16, 11).transpose(1, 2)  # (5, 11, 16), strided
    with torch.inference_mode():
        assert (linear(x, layer) - F.linear(x, layer.weight, layer.bias)).abs().max() < 1e-5
        x2 = torch.randn(9, 16)
        assert (linear(x2, layer, "relu") - F.relu(F.linear(x2, layer.weight, layer.bias))).abs().max() < 1e-5
        r = torch.randn(8)
        assert (linear(x2, layer, residual=r) - (F.linear(x2, layer.weight, layer.bias) + r)).abs().max() < 1e-5


def test_autograd_takes_the_torch_path_and_its_gradients():
    layer = make(12, 6)
    x = torch.randn(4, 12, requires_grad=True)
    assert not fused_path(x, layer)
    residual = torch.randn(4, 6, requires_grad=True)
    y = linear(x, layer, residual=residual)
    y.pow(2).sum().backward()
    gx, gw, gr = x.grad.clone(), layer.weight.grad.clone(), residual.grad.clone()
    x.grad = layer.weight.grad = residual.grad = None
    (F.linear(x, layer.weight, layer.bias) + residual).pow(2).sum().backward()
    assert torch.equal(gx, x.grad) and torch.equal(gw, layer.weight.grad) and torch.equal(gr, residual.grad)


def test_no_grad_but_frozen_weights_only_still_fused_when_nothing_needs_grad(monkeypatch):
    layer = make(12, 6).requires_grad_(False)
    x = torch.randn(4, 12)
    assert fused_path(x, layer) == lin._onednn_available()  # grad enabled, but no graph to build
    monkeypatch.setenv("LONGFORMER_ONEDNN", "0")
    assert not fused_path(x, layer)


def test_fp16_and_dtype_mismatch_take_the_torch_path():
    layer = make(8, 4)
    assert not fused_path(torch.randn(2, 8, dtype=torch.float16), layer.half())
    assert not fused_path(torch.randn(2, 8, dtype=torch.bfloat16), make(8, 4))


@needs_onednn
def test_compile_traces_the_torch_path():
    layer = make(16, 8).eval()
    seen = []

    def f(x):
        seen.append(fused_path(x, layer))
        return linear(x, layer, "gelu")

    x = torch.randn(3, 16)
    with torch.no_grad():
        got = torch.compile(f, backend="eager")(x)
    assert seen and not any(seen)
    assert (got - F.gelu(F.linear(x, layer.weight, layer.bias))).abs().max() < 1e-5


def test_bad_arguments():
    layer = make(4, 4)
    with pytest.raises(ValueError, match="not both"):
        linear(torch.randn(1, 4), layer, "gelu", residual=torch.randn(1, 4))
    with pytest.raises(ValueError, match="unsupported activation 'gelu_42'"):
        linear(torch.randn(1, 4), layer, "gelu_42")


def test_a_module_standing_in_for_the_linear_runs_its_own_forward():
    """PEFT's LoRA layer (or a hooked / subclassed Linear) replaces `query`: its forward must run."""
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = Doubled(8, 4)
    x = torch.randn(3, 8)
    with torch.inference_mode():
        assert not fused_path(x, layer)
        assert torch.allclose(linear(x, layer, "relu"), F.relu(2 * F.linear(x, layer.weight, layer.bias)))
    plain = make(8, 4)
    calls = []
    plain.register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.inference_mode():
        assert not fused_path(x, plain)
        linear(x, plain)
    assert calls == [1]
