"""Dense layers of every model here: `linear(x, layer, activation, residual)` and transformers'
activation names.

`linear` computes `activation(layer(x)) + residual`, the same function everywhere. In inference on
the CPU (no autograd graph, fp32 or bf16, not under torch.compile / torch.export / tracing) it runs as
ONE oneDNN inner product whose epilogue adds the bias, applies the activation and adds the residual.
In fp32 training on the CPU the three GEMMs (forward, input and weight gradients) run on oneDNN
(`OneDNNLinear`), the activation and the add as torch ops. Anywhere else: `F.linear`, the activation
and an add.

Why (one H=12, C=768, T=4096 encoder layer; `longformer bench layer`, 2-core AMD EPYC with
AVX-512): torch's `F.linear` goes through `addmm`, which first copies the broadcast bias into its
output (`aten::copy_`, 5-6% of the layer's forward) and, in fp32, through a GEMM that on this CPU is
half as fast as oneDNN's (768 -> 3072 at T=4096: 109 ms against 60 ms; the input gradient 106 against
52 ms, the weight gradient 102 against 82 ms with its transposed copies); the activation and the
residual add are two more passes over the output. `LONGFORMER_ONEDNN=0` turns the fused path off (for
comparisons; the result agrees within fp32 / bf16 rounding, tests/test_linear.py).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def gelu_python(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


# transformers' activation names (ACT2FN) in config.json -> functions
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf), as transformers' "gelu"
    "gelu_python": gelu_python,
    "gelu_new": gelu_tanh,  # the tanh approximation, under its four transformers names
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu_accurate": gelu_tanh,
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}

# The activations oneDNN applies in the inner product's epilogue: name -> (oneDNN attr, algorithm).
# The others (quick_gelu, relu6, mish) run after it as a separate op.
_EPILOGUES = {
    "gelu": ("gelu", "none"), "gelu_python": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"), "gelu_fast": ("gelu", "tanh"),
    "gelu_accurate": ("gelu", "tanh"),
    "relu": ("relu", ""), "silu": ("swish", ""), "swish": ("swish", ""), "tanh": ("tanh", ""),
    "sigmoid": ("sigmoid", ""), "linear": ("none", ""),
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@lru_cache(maxsize=None)
def _onednn_available() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:  # the op inductor uses for CPU linear layers; absent from some builds
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018
        torch.ops.mkldnn._linear_pointwise.binary  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.jit.is_scripting())


def _plain(layer: nn.Module) -> bool:
    """A bare nn.Linear whose forward is F.linear: not a subclass or a replacement (PEFT's LoRA layer,
    a quantized linear) and without hooks, whose forward must run as the module's own call."""
    return (type(layer) is nn.Linear and not layer._forward_hooks and not layer._forward_pre_hooks
            and not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks)


def _needs_graph(x: torch.Tensor, layer: nn.Module) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))


# Smallest product (rows x in x out multiply-adds) sent to oneDNN. oneDNN builds a primitive for each
# new shape (measured ~1 ms, then cached) where F.linear starts in ~13 us: worth it for the GEMMs of
# long inputs (4096 x 768 x 768 = 2.4e9), not for tiny layers or a handful of rows.
MIN_MACS = 1 << 24


def _onednn_ok(x: torch.Tensor, layer: nn.Module) -> bool:
    if not _plain(layer) or _tracing():  # tracing first: the size test below would guard on symbols
        return False
    w = layer.weight
    if x.numel() // max(x.shape[-1], 1) * w.shape[0] * w.shape[1] < MIN_MACS:
        return False
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or w.dtype != x.dtype:
        return False
    if x.dim() < 2 or not w.is_contiguous():
        return False
    if torch.is_autocast_enabled("cpu"):
        return False  # autocast decides the GEMM's dtype; F.linear is what it casts
    return os.environ.get("LONGFORMER_ONEDNN", "1") != "0" and _onednn_available()


def fused_path(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether `linear` runs as one fused oneDNN op (inference: no autograd graph to build)."""
    return not _needs_graph(x, layer) and _onednn_ok(x, layer)


def training_path(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether `linear` runs as `OneDNNLinear` (an autograd graph is built; fp32 only: bf16 training
    goes through autocast, which takes F.linear)."""
    return _needs_graph(x, layer) and x.dtype == torch.float32 and _onednn_ok(x, layer)


def _mm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (N, K)^T on oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """F.linear with its three GEMMs on oneDNN: the forward, grad_input = g W and grad_weight = g^T x
    (the last with both operands transposed into contiguous copies, as oneDNN's op reads rows; on the
    CPU measured in the module docstring the copies cost less than the GEMM gains)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0]).contiguous()  # (M, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm_t(g, weight.t().contiguous()).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _mm_t(g.t().contiguous(), x.reshape(-1, x.shape[-1]).t().contiguous())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, layer: nn.Module, activation: str | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """activation(layer(x)) + residual. layer: an nn.Linear, or any module standing in for one (PEFT's
    LoRA layers: those run as their own forward). x (..., in), residual (..., out) or None; activation one of
    ACTIVATIONS' names or None. A residual and an activation together are not fused (the order of
    the two is ambiguous), so pass at most one of them."""
    if activation is not None and residual is not None:
        raise ValueError("linear() takes an activation or a residual, not both")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    if fused_path(x, layer):
        x = x.contiguous()
        if residual is not None and residual.shape == (*x.shape[:-1], layer.out_features) and residual.dtype == x.dtype:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), layer.weight, layer.bias,
                                                             "add")
        if activation is None or activation in _EPILOGUES:
            attr, algorithm = _EPILOGUES[activation or "linear"]
            y = torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, attr, [], algorithm)
            return y if residual is None else y + residual
        return ACTIVATIONS[activation](torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none",
                                                                          [], ""))
    if training_path(x, layer):
        y = OneDNNLinear.apply(x, layer.weight, layer.bias)
    else:
        y = F.linear(x, layer.weight, layer.bias) if _plain(layer) else layer(x)
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y if residual is None else y + residual
