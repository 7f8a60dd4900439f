"""`longformer.linear.linear`: the fused oneDNN path agrees with F.linear + activation + residual, and is
taken exactly where it may be (inference on the CPU), never under autograd or tracing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longformer import linear as lin
from longformer.linear import ACTIVATIONS, fused_path, linear, training_path

needs_onednn = pytest.mark.skipif(not lin._onednn_available(), reason="this torch build has no oneDNN linear op")


@pytest.fixture(autouse=True)
def _small_shapes_fused(monkeypatch):
    """These tests use small layers: send them to oneDNN too (real ones pass MIN_MACS by far)."""
    monkeypatch.setattr(lin, "MIN_MACS", 0)


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


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", [False, True])
def test_training_gradients(bias, frozen):
    """fp32 with autograd: OneDNNLinear where oneDNN exists (else F.linear); its gradients against
    float64 F.linear, on a 3-D strided input, a residual and an activation applied after it."""
    layer = make(48, 20, bias=bias).requires_grad_(not frozen)
    x = torch.randn(3, 48, 11).transpose(1, 2).requires_grad_(True)  # (3, 11, 48), strided
    residual = torch.randn(3, 11, 20, requires_grad=True)
    assert training_path(x, layer) == lin._onednn_available()
    assert not fused_path(x, layer)
    seed = torch.randn(3, 11, 20)
    for act, res in (("gelu", None), (None, residual)):
        got = linear(x, layer, act, res)
        params = [x, residual] + ([] if frozen else list(layer.parameters()))
        grads = torch.autograd.grad((got * seed).sum(), [p for p in params if p.requires_grad], allow_unused=True)
        x64 = x.detach().double().requires_grad_(True)
        w64 = layer.weight.detach().double().requires_grad_(True)
        b64 = layer.bias.detach().double().requires_grad_(True) if bias else None
        r64 = residual.detach().double().requires_grad_(True)
        want = F.linear(x64, w64, b64)
        want = ACTIVATIONS[act](want) if act else want + r64
        refs = [x64, r64] + ([] if frozen else [w64] + ([b64] if bias else []))
        want_grads = torch.autograd.grad((want * seed.double()).sum(), refs, allow_unused=True)
        assert (got.double() - want).abs().max() < 1e-4
        for g, w in zip(grads, want_grads):
            if w is None:
                assert g is None or not g.abs().any()
            else:
                assert (g.double() - w).abs().max() < 1e-4


def test_double_backward_is_refused():
    layer = make(6, 4)
    x = torch.randn(2, 6, requires_grad=True)
    if not training_path(x, layer):
        pytest.skip("no oneDNN: F.linear, which supports double backward")
    (gx,) = torch.autograd.grad(linear(x, layer).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice|double"):
        gx.sum().backward()


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


def test_autocast_takes_the_torch_path():
    """Under autocast, F.linear runs in bf16 whatever the weights' dtype: the fused path would not."""
    layer = make(16, 8)
    x = torch.randn(3, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_path(x, layer)
        assert linear(x, layer).dtype == torch.bfloat16


def test_small_products_stay_on_f_linear(monkeypatch):
    monkeypatch.setattr(lin, "MIN_MACS", 1 << 24)
    layer = make(64, 64)
    with torch.inference_mode():
        assert not fused_path(torch.randn(10, 64), layer)  # 10 x 64 x 64 multiply-adds
        assert fused_path(torch.randn(4096, 64), layer) == lin._onednn_available()
