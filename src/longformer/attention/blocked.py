"""The memory-linear blocked kernel: forward and backward in O(T * (w + G)) time and memory.

Per batch element and head, attention is split into three parts whose softmaxes are merged with
their log-sum-exps (flash-attention style):

1. the band: for a head with dilation r, the rows ``m, m + r, m + 2r, ...`` form an undilated
   sequence of about T / r tokens with the same window (split by ``i mod r``), computed block by
   block in `_band.py`. Global keys are masked out of the band so that they count once;
2. the global keys: every row attends the gathered global keys (G, D) of its batch element;
3. the global rows: recomputed as full attention over all T keys (G x T, linear in T), overwriting
   whatever the first two parts gave them.

Only q, k, v, the output and the per-row log-sum-exp are saved for backward, which recomputes the
scores of each part. Causal masking and padding apply to all three parts.
"""
from __future__ import annotations

import torch

from ._band import NEG_INF, BandLayout, band_backward, band_forward

BLOCK = 64  # query rows per band block: a (64, 64 + 2w) score tile per GEMM
ROWS_PER_CHUNK = 1024  # band rows whose scores live at once, to bound temporary memory


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    dilation: tuple[int, ...],
    causal: bool,
    key_valid: torch.Tensor | None,
    is_global: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Longformer attention, exact semantics of `reference_attention`, memory-linear in T.

    q, k, v: (B, H, T, D); dilation: H ints; key_valid, is_global: bool (B, T) or None.
    Returns (B, H, T, D) in q's dtype. Arguments are assumed checked by `sliding_window_attention`.
    """
    return _BlockedAttention.apply(q, k, v, window, tuple(dilation), causal, key_valid, is_global, scale)


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, dilation, causal, key_valid, is_global, scale):
        plan = _Plan(q, window, dilation, causal, key_valid, is_global, scale)
        out, lse = _forward(plan, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(ctx.plan, q, k, v, out, lse, dout)
        return dq, dk, dv, None, None, None, None, None, None


class _Plan:
    """Per-call constants: masks per batch element and the statistics dtype."""

    def __init__(self, q, window, dilation, causal, key_valid, is_global, scale):
        B, H, T, D = q.shape
        self.window, self.dilation, self.causal, self.scale = window, dilation, causal, scale
        self.stat = torch.float64 if q.dtype == torch.float64 else torch.float32
        self.key_valid = key_valid
        self.global_idx: list[torch.Tensor | None] = []
        self.band_ok: list[torch.Tensor | None] = []  # keys the band may use: valid and not global
        for b in range(B):
            idx = None if is_global is None else is_global[b].nonzero().squeeze(1)
            if idx is not None and idx.numel() == 0:
                idx = None
            self.global_idx.append(idx)
            ok = None if key_valid is None else key_valid[b]
            if idx is not None:
                ok = ~is_global[b] if ok is None else ok & ~is_global[b]
            self.band_ok.append(ok)
        self.is_global = is_global

    def residues(self, h: int, T: int):
        """(slice, BandLayout) of each undilated sub-sequence of head h."""
        r = self.dilation[h]
        right = 0 if self.causal else self.window
        for m in range(min(r, T)):
            yield slice(m, None, r), BandLayout.make(len(range(m, T, r)), self.window, right, BLOCK)


def _forward(plan: _Plan, q, k, v):
    B, H, T, D = q.shape
    out = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=plan.stat, device=q.device)
    for b in range(B):
        ok, idx = plan.band_ok[b], plan.global_idx[b]
        for h in range(H):
            for sl, lay in plan.residues(h, T):
                o, l = band_forward(
                    q[b, h, sl], k[b, h, sl], v[b, h, sl], None if ok is None else ok[sl],
                    lay, plan.scale, plan.stat, ROWS_PER_CHUNK,
                )
                out[b, h, sl] = o
                lse[b, h, sl] = l
            if idx is not None:
                _global_forward(plan, b, idx, q[b, h], k[b, h], v[b, h], out[b, h], lse[b, h])
    return out, lse


def _backward(plan: _Plan, q, k, v, out, lse, dout):
    B, H, T, D = q.shape
    dq, dk, dv = (torch.empty(B, H, T, D, dtype=q.dtype, device=q.device) for _ in range(3))
    for b in range(B):
        ok, idx = plan.band_ok[b], plan.global_idx[b]
        for h in range(H):
            do = dout[b, h]
            delta = (do.to(plan.stat) * out[b, h].to(plan.stat)).sum(-1)  # (T,)
            do_loc, delta_loc = do, delta
            if idx is not None:
                # global rows took their output from part 3 only: parts 1 and 2 get no gradient there
                local = ~plan.is_global[b]
                do_loc, delta_loc = do * local[:, None], delta * local
            dq_h, dk_h, dv_h = (torch.zeros(T, D, dtype=plan.stat, device=q.device) for _ in range(3))
            for sl, lay in plan.residues(h, T):
                gq, gk, gv = band_backward(
                    q[b, h, sl], k[b, h, sl], v[b, h, sl], None if ok is None else ok[sl],
                    lay, plan.scale, plan.stat, do_loc[sl], lse[b, h, sl], delta_loc[sl], ROWS_PER_CHUNK,
                )
                dq_h[sl], dk_h[sl], dv_h[sl] = gq, gk, gv
            if idx is not None:
                _global_backward(
                    plan, b, idx, q[b, h], k[b, h], v[b, h], lse[b, h], do, delta, do_loc, delta_loc,
                    dq_h, dk_h, dv_h,
                )
            dq[b, h], dk[b, h], dv[b, h] = dq_h, dk_h, dv_h
    return dq, dk, dv


def _global_masks(plan: _Plan, b: int, idx: torch.Tensor, T: int):
    """Bool masks (T, G) of rows x global keys and (G, T) of global rows x keys."""
    pos = torch.arange(T, device=idx.device)
    to_glob = torch.ones(T, idx.numel(), dtype=torch.bool, device=idx.device)
    from_glob = torch.ones(idx.numel(), T, dtype=torch.bool, device=idx.device)
    if plan.key_valid is not None:
        to_glob = to_glob & plan.key_valid[b][idx][None, :]
        from_glob = from_glob & plan.key_valid[b][None, :]
    if plan.causal:
        to_glob = to_glob & (idx[None, :] <= pos[:, None])
        from_glob = from_glob & (pos[None, :] <= idx[:, None])
    return to_glob, from_glob


def _scores(plan: _Plan, a: torch.Tensor, b: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return (a @ b.transpose(0, 1)).to(plan.stat).mul_(plan.scale).masked_fill_(~allowed, NEG_INF)


def _safe(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf (rows with no key) replaced by 0, so that exp(-inf - lse) = 0, never NaN."""
    return lse.masked_fill(lse == NEG_INF, 0.0)


def _global_forward(plan: _Plan, b, idx, q, k, v, out, lse) -> None:
    """Merge part 2 into (out, lse) of one head in place, then overwrite the global rows (part 3)."""
    T = q.shape[0]
    to_glob, from_glob = _global_masks(plan, b, idx, T)
    kg, vg = k[idx], v[idx]  # (G, D)
    s = _scores(plan, q, kg, to_glob)  # (T, G)
    lg = torch.logsumexp(s, dim=-1)
    og = s.sub_(_safe(lg)[:, None]).exp_().to(v.dtype) @ vg
    new = torch.logaddexp(lse, lg)
    wb = (lse - _safe(new)).exp_()[:, None]
    wg = (lg - _safe(new)).exp_()[:, None]
    out.copy_(out.to(plan.stat).mul_(wb).add_(og.to(plan.stat).mul_(wg)))
    lse.copy_(new)
    s = _scores(plan, q[idx], k, from_glob)  # (G, T)
    lr = torch.logsumexp(s, dim=-1)
    out[idx] = s.sub_(_safe(lr)[:, None]).exp_().to(v.dtype) @ v
    lse[idx] = lr


def _global_backward(plan: _Plan, b, idx, q, k, v, lse, do, delta, do_loc, delta_loc, dq, dk, dv) -> None:
    """Add the gradients of parts 2 and 3 of one head to the (T, D) accumulators dq, dk, dv."""
    T = q.shape[0]
    st, scale = plan.stat, plan.scale
    # scores recomputed as in forward, every other product in the statistics dtype (see band_backward)
    to_glob, from_glob = _global_masks(plan, b, idx, T)
    s_glob = _scores(plan, q, k[idx], to_glob)  # (T, G)
    s_rows = _scores(plan, q[idx], k, from_glob)  # (G, T)
    q, k, v, do, do_loc = (t.to(st) for t in (q, k, v, do, do_loc))
    kg, vg = k[idx], v[idx]
    p = s_glob.sub_(_safe(lse)[:, None]).exp_()
    dv.index_add_(0, idx, p.transpose(0, 1) @ do_loc)
    ds = (do_loc @ vg.transpose(0, 1)).sub_(delta_loc[:, None]).mul_(p)
    dq.add_(ds @ kg, alpha=scale)
    dk.index_add_(0, idx, ds.transpose(0, 1) @ q, alpha=scale)
    qg, dog = q[idx], do[idx]
    p = s_rows.sub_(_safe(lse[idx])[:, None]).exp_()
    dv.add_(p.transpose(0, 1) @ dog)
    ds = (dog @ v.transpose(0, 1)).sub_(delta[idx][:, None]).mul_(p)
    dq.index_add_(0, idx, ds @ k, alpha=scale)
    dk.add_(ds.transpose(0, 1) @ qg, alpha=scale)
