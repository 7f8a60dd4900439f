"""The compiled CPU kernel behind torch autograd.

Parts 1 and 2 of the pattern (the band, and every row against the global keys; see blocked.py) run
fused in _kernel.cpp, forward and backward, over all heads, dilations and batch elements in one
call. Part 3 (global rows as full attention, G x T) runs in torch, shared with the blocked kernel.
Computation is fp32 whatever the input dtype (bf16/fp16 inputs are widened once and the result
rounded back), so low-precision results carry only their final rounding. fp64 is not supported
here (``impl="blocked"`` keeps fp64 end to end).

Saved for backward: q, k, v, the output and the per-row log-sum-exp, as in the blocked kernel.
"""
from __future__ import annotations

import ctypes

import torch

from . import _native
from .blocked import _Plan, global_rows_backward, global_rows_forward

BLOCK = 64  # query rows per block: a multiple of the kernel's 2 * SIMD width (16 or 32 floats)


def available() -> bool:
    """True when the kernel is built (or buildable) and loads on this machine."""
    return _native.load() is not None


def supports(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)


def compiled_attention(q, k, v, window, dilation, causal, key_valid, is_global, scale) -> torch.Tensor:
    """Same contract as `blocked_attention`; CPU tensors of fp32, bf16 or fp16."""
    if q.device.type != "cpu":
        raise ValueError(f"impl='compiled' runs on the CPU only, got tensors on {q.device}; use impl='blocked' or 'auto'")
    if not supports(q):
        raise TypeError(f"impl='compiled' takes fp32, bf16 or fp16, got {q.dtype}; use impl='blocked' or 'auto'")
    if _native.load() is None:
        raise RuntimeError(
            f"the compiled kernel is not available: {_native.status().reason}. Use impl='blocked' or 'auto' "
            "(which falls back to it)."
        )
    return _Compiled.apply(q, k, v, window, tuple(dilation), causal, key_valid, is_global, scale)


class _Args:
    """The kernel's integer config and mask arrays, kept alive for the duration of the calls."""

    def __init__(self, plan: _Plan, dilation: tuple[int, ...], D: int):
        B, H, T = plan.B, plan.H, plan.T
        counts = [0 if idx is None else idx.numel() for idx in plan.global_idx]
        self.Gmax = max(counts, default=0)
        self.gpos = torch.zeros(B, max(self.Gmax, 1), dtype=torch.int64)
        for b, idx in enumerate(plan.global_idx):
            if idx is not None:
                self.gpos[b, : idx.numel()] = idx.cpu()
        self.gcount = torch.tensor(counts, dtype=torch.int64)
        self.cfg = torch.tensor([B, H, T, D, plan.window, int(plan.causal), BLOCK, self.Gmax, *dilation], dtype=torch.int64)
        self.band_ok = None if plan.band_ok is None else plan.band_ok.to(torch.uint8).contiguous()
        self.key_valid = None if plan.key_valid is None else plan.key_valid.to(torch.uint8).contiguous()
        self.any_global = self.Gmax > 0

    def masks(self) -> list:
        ptr = lambda t: None if t is None else ctypes.c_void_p(t.data_ptr())  # noqa: E731
        return [
            ptr(self.band_ok), ptr(self.key_valid),
            ptr(self.gpos) if self.any_global else None, ptr(self.gcount) if self.any_global else None,
        ]


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


class _Compiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, dilation, causal, key_valid, is_global, scale):
        B, H, T, D = q.shape
        plan = _Plan(q, window, dilation, causal, key_valid, is_global, scale)
        args = _Args(plan, dilation, D)
        qf, kf, vf = _fp32(q), _fp32(k), _fp32(v)
        out = torch.empty(B, H, T, D, dtype=torch.float32)
        lse = torch.empty(B, H, T, dtype=torch.float32)
        _native.load().lf_band_forward(
            _ptr(args.cfg), _ptr(qf), _ptr(kf), _ptr(vf), _ptr(out), _ptr(lse), *args.masks(), float(scale),
            torch.get_num_threads(),
        )
        for b, idx in enumerate(plan.global_idx):
            if idx is not None:
                global_rows_forward(plan, b, idx, qf[b], kf[b], vf[b], out[b], lse[b])
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.args, ctx.scale = plan, args, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        plan, args = ctx.plan, ctx.args
        B, H, T, D = q.shape
        qf, kf, vf, do = _fp32(q), _fp32(k), _fp32(v), _fp32(dout)
        delta = (do * out.to(torch.float32)).sum(-1)  # (B, H, T), from the output as returned
        do_loc, delta_loc = do, delta
        if plan.is_global is not None:
            # global rows took their output from part 3 only: parts 1 and 2 get no gradient there
            local = ~plan.is_global[:, None, :]
            do_loc, delta_loc = (do * local[..., None]).contiguous(), (delta * local).contiguous()
        dq = torch.empty(B, H, T, D, dtype=torch.float32)
        dk = torch.zeros(B, H, T, D, dtype=torch.float32)
        dv = torch.zeros(B, H, T, D, dtype=torch.float32)
        _native.load().lf_band_backward(
            _ptr(args.cfg), _ptr(qf), _ptr(kf), _ptr(vf), _ptr(do_loc), _ptr(lse), _ptr(delta_loc),
            _ptr(dq), _ptr(dk), _ptr(dv), *args.masks(), float(ctx.scale), torch.get_num_threads(),
        )
        for b, idx in enumerate(plan.global_idx):
            if idx is not None:
                global_rows_backward(plan, b, idx, qf[b], kf[b], vf[b], lse[b], do[b], delta[b], dq[b], dk[b], dv[b])
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), None, None, None, None, None, None
