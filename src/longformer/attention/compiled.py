"""The compiled CPU kernel as a torch custom op (with autograd and fake-shape rules).

Parts 1 and 2 of the pattern (the band, and every row against the global keys; see blocked.py) run
fused in _kernel.cpp, forward and backward, over all heads, dilations and batch elements in one
call. Part 3 (the global rows as full attention, G x T) runs in the same forward pass (each block's
keys are attended by the global rows while they are in cache) and in a second kernel call of the
backward, over ranges of keys in parallel.
The kernel reads fp32, bf16 or fp16 inputs as they are and widens them while packing; it computes in
fp32, so low-precision results carry only their final rounding. The one exception is the bf16
forward on CPUs with AVX512-BF16 (see BF16_DOT): its products take bf16 operands, probabilities
rounded to bf16 included. fp64 is not supported here (``impl="blocked"`` keeps fp64 end to end).

Saved for backward: q, k, v, the output and the per-row log-sum-exp, as in the blocked kernel.
"""
from __future__ import annotations

import ctypes
import os

import torch

from . import _native
from .blocked import _Plan
from .dropout import threshold

BLOCK = 64  # query rows per block: a multiple of the kernel's 2 * SIMD width (16 or 32 floats)

# bf16 forward with bf16 pair products (vdpbf16ps): "native" where the CPU has AVX512-BF16 (its bf16
# dot product runs at twice the fp32 FMA rate), "always" (emulated by exact fp32 FMAs elsewhere: slower,
# for testing the pair layouts on any machine), or "never" (bf16 forward computed in fp32, like the
# backward). Default from $LONGFORMER_BF16_DOT, else "native".
BF16_DOT = os.environ.get("LONGFORMER_BF16_DOT", "native")
_BF16_DOT_CODES = {"never": 0, "native": 1, "always": 2}
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def available() -> bool:
    """True when the kernel is built (or buildable) and loads on this machine."""
    return _native.load() is not None


def supports(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)


def compiled_attention(q, k, v, window, dilation, causal, key_valid, is_global, scale, dropout=None) -> torch.Tensor:
    """Same contract as `blocked_attention`; CPU tensors of fp32, bf16 or fp16."""
    if q.device.type != "cpu":
        raise ValueError(f"impl='compiled' runs on the CPU only, got tensors on {q.device}; use impl='blocked' or 'auto'")
    if not supports(q):
        raise TypeError(f"impl='compiled' takes fp32, bf16 or fp16, got {q.dtype}; use impl='blocked' or 'auto'")
    if not _available_constant():
        raise RuntimeError(
            f"the compiled kernel is not available: {_native.status().reason}. Use impl='blocked' or 'auto' "
            "(which falls back to it)."
        )
    p, seed = dropout if dropout is not None else (0.0, 0)
    out, _ = band_attention(q, k, v, key_valid, is_global, window, list(dilation), causal, float(scale), p, seed)
    return out


@torch.compiler.assume_constant_result
def _available_constant() -> bool:
    # evaluated once while torch.compile traces, instead of tracing into ctypes
    return available()


# The kernel as a torch custom op: opaque to torch.compile (which sees only the fake shapes below),
# so a compiled model keeps the linear-memory kernel; the plan's data-dependent shapes stay inside.
@torch.library.custom_op("longformer::band_attention", mutates_args=())
def band_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None, is_global: torch.Tensor | None,
    window: int, dilation: list[int], causal: bool, scale: float, dropout_p: float, seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out in q's dtype, per-row log-sum-exp fp32 (B, H, T)). dropout_p = 0: no dropout."""
    return _forward(q, k, v, key_valid, is_global, window, tuple(dilation), causal, scale, dropout_p, seed)


@band_attention.register_fake
def _(q, k, v, key_valid, is_global, window, dilation, causal, scale, dropout_p, seed):
    return _new_like(_rows(q)), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("longformer::band_attention_backward", mutates_args=())
def band_attention_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    key_valid: torch.Tensor | None, is_global: torch.Tensor | None, window: int, dilation: list[int], causal: bool,
    scale: float, dropout_p: float, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dout, q, k, v, out, lse, key_valid, is_global, window, tuple(dilation), causal, scale,
                     dropout_p, seed)


@band_attention_backward.register_fake
def _(dout, q, k, v, out, lse, key_valid, is_global, window, dilation, causal, scale, dropout_p, seed):
    return tuple(_new_like(_rows(t)) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, key_valid, is_global, window, dilation, causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_valid, is_global)
    ctx.args = (window, dilation, causal, scale, dropout_p, seed)


def _backward_rule(ctx, dout, _dlse):
    q, k, v, out, lse, key_valid, is_global = ctx.saved_tensors
    dq, dk, dv = band_attention_backward(_rows(dout), q, k, v, out, lse, key_valid, is_global, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None, None


band_attention.register_autograd(_backward_rule, setup_context=_setup_context)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t itself when its rows of D elements are contiguous (any strides along B, H and T), else a copy.

    The kernel reads and writes every (B, H, T, D) array at its own strides, so a layer's q, k and v
    can be (B, T, H, D) projections viewed as (B, H, T, D) (`x.view(B, T, H, D).transpose(1, 2)`, also
    slices of one fused projection): no copy. Outputs and gradients are made by `_new_like`.
    """
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _new_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A new (B, H, T, D) tensor with t's order of heads and tokens in memory.

    Where t's heads lie inside its tokens (a layer's projections, (B, T, H, D) memory, even when they
    are slices of a fused q/k/v projection), the new tensor is a (B, H, T, D) view of (B, T, H, D)
    memory: the layer's `out.transpose(1, 2).reshape(B, T, H * D)` for the output projection is then
    a view, and the gradients flow back into the projections' layout without a copy. Else contiguous.
    """
    B, H, T, D = t.shape
    if t.stride(1) < t.stride(2):
        return t.new_empty(B, T, H, D, dtype=dtype).transpose(1, 2)
    return t.new_empty(B, H, T, D, dtype=dtype)


def _strides(*ts: torch.Tensor | None) -> list[int]:
    """The (B, H, T) element strides of q, k, v, out, dout, dq, dk, dv in the kernel's cfg (0: not passed)."""
    return [x for t in ts for x in (t.stride()[:3] if t is not None else (0, 0, 0))]


class _Args:
    """The kernel's integer config and mask arrays, kept alive for the duration of the calls."""

    def __init__(self, plan: _Plan, dilation: tuple[int, ...], D: int, dtype: torch.dtype, dropout_p: float, seed: int,
                 strides: list[int]):
        B, H, T = plan.B, plan.H, plan.T
        counts = [0 if idx is None else idx.numel() for idx in plan.global_idx]
        self.Gmax = max(counts, default=0)
        self.gpos = torch.zeros(B, max(self.Gmax, 1), dtype=torch.int64)
        for b, idx in enumerate(plan.global_idx):
            if idx is not None:
                self.gpos[b, : idx.numel()] = idx.cpu()
        self.gcount = torch.tensor(counts, dtype=torch.int64)
        self.thr = threshold(dropout_p)
        self.seed = seed & 0xFFFFFFFF
        if BF16_DOT not in _BF16_DOT_CODES:
            raise ValueError(
                f"compiled.BF16_DOT (default from $LONGFORMER_BF16_DOT) must be one of {sorted(_BF16_DOT_CODES)}, "
                f"got {BF16_DOT!r}"
            )
        self.cfg = torch.tensor(
            [B, H, T, D, plan.window, int(plan.causal), BLOCK, self.Gmax, self.thr, self.seed, _DTYPE_CODES[dtype],
             _BF16_DOT_CODES[BF16_DOT], *strides, *dilation],
            dtype=torch.int64,
        )
        self.any_global = self.Gmax > 0
        # uint8 masks (B, T) and their pointers (None: no such mask); the tensors stay alive with self
        self._keep = [
            None if m is None else m.to(torch.uint8).contiguous()
            for m in (plan.band_ok, plan.key_valid, plan.is_global if self.any_global else None)
        ]
        self.band_ok, self.key_valid, self.row_global = (None if m is None else _ptr(m) for m in self._keep)
        self.gpos_p = _ptr(self.gpos) if self.any_global else None
        self.gcount_p = _ptr(self.gcount) if self.any_global else None


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _forward(q, k, v, key_valid, is_global, window, dilation, causal, scale, dropout_p, seed):
    B, H, T, D = q.shape
    plan = _Plan(q, window, dilation, causal, key_valid, is_global, scale)
    q, k, v = _rows(q), _rows(k), _rows(v)  # read in their own dtype and layout by the kernel
    out = _new_like(q)
    args = _Args(plan, dilation, D, q.dtype, dropout_p, seed, _strides(q, k, v, out, None, None, None, None))
    lse = torch.empty(B, H, T, dtype=torch.float32)
    _native.load().lf_band_forward(
        _ptr(args.cfg), _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), args.band_ok, args.key_valid,
        args.gpos_p, args.gcount_p, float(scale), torch.get_num_threads(),
    )
    return out, lse


def _backward(dout, q, k, v, out, lse, key_valid, is_global, window, dilation, causal, scale, dropout_p, seed):
    B, H, T, D = q.shape
    plan = _Plan(q, window, dilation, causal, key_valid, is_global, scale)
    q, k, v, out, do = _rows(q), _rows(k), _rows(v), _rows(out), _rows(dout.to(q.dtype))
    # the kernel computes delta = rowsum(dO * O) from the output as returned, for every row, and
    # leaves the global rows (whose gradient is part 3's) out of parts 1 and 2 itself: no (B, H, T, D)
    # temporaries here
    delta = torch.empty(B, H, T, dtype=torch.float32)
    dq = _new_like(q, torch.float32)
    dk = _new_like(k, torch.float32).zero_()
    dv = _new_like(v, torch.float32).zero_()
    args = _Args(plan, dilation, D, q.dtype, dropout_p, seed, _strides(q, k, v, out, do, dq, dk, dv))
    _native.load().lf_band_backward(
        _ptr(args.cfg), _ptr(q), _ptr(k), _ptr(v), _ptr(do), _ptr(out), _ptr(lse), _ptr(delta),
        _ptr(dq), _ptr(dk), _ptr(dv), args.band_ok, args.key_valid, args.row_global, args.gpos_p, args.gcount_p,
        float(scale), torch.get_num_threads(),
    )
    if args.any_global:
        # part 3 (the global rows' full attention) in the kernel too, after parts 1 and 2: its scores are
        # fp32 products of the inputs, as in the flash forward that made its lse
        _native.load().lf_global_rows_backward(
            _ptr(args.cfg), _ptr(q), _ptr(k), _ptr(v), _ptr(do), _ptr(lse), _ptr(delta), _ptr(dq), _ptr(dk),
            _ptr(dv), args.key_valid, args.gpos_p, args.gcount_p, float(scale), torch.get_num_threads(),
        )
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
