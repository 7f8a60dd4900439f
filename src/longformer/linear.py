"""Dense layers of every model here: `linear(x, layer, activation, residual)` and transformers'
activation names.

`linear` computes `activation(layer(x)) + residual`, the same function everywhere. In inference on
the CPU (no autograd graph, fp32 or bf16, not under torch.compile / torch.export / tracing) it runs as
ONE oneDNN inner product whose epilogue adds the bias, applies the activation and adds the residual;
anywhere else as `F.linear`, the activation and an add.

Why (one H=12, C=768, T=4096 encoder layer; `longformer bench layer`, 2-core AMD EPYC with
AVX-512): torch's `F.linear` goes through `addmm`, which first copies the broadcast bias into its
output (`aten::copy_`, 5-6% of the layer's forward) and, in fp32, through a GEMM that on this CPU is
half as fast as oneDNN's (768 -> 3072 at T=4096: 109 ms against 60 ms); the activation and the
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


def fused_path(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether `linear` takes the oneDNN path for this call (see the module docstring)."""
    if not _plain(layer):
        return False
    w = layer.weight
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or w.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters())):
        return False  # oneDNN's op has no backward
    if x.dim() < 2 or not w.is_contiguous() or _tracing():
        return False
    return os.environ.get("LONGFORMER_ONEDNN", "1") != "0" and _onednn_available()


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
    y = F.linear(x, layer.weight, layer.bias) if _plain(layer) else layer(x)
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y if residual is None else y + residual
