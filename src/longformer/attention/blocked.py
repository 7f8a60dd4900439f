"""The memory-linear blocked kernel: forward and backward in O(T * (w + G)) time and memory.

Attention is split into three parts whose softmaxes are merged with their log-sum-exps
(flash-attention style):

1. the band: heads are grouped by dilation r; for such a head the rows ``m, m + r, m + 2r, ...``
   form an undilated sequence of ``ceil(T / r)`` tokens with the same window (split by
   ``i mod r``). All batch elements, heads of the group and residues m are computed together as N
   sequences by `_band.py`. Global keys are masked out of the band so that they count once;
2. the global keys: every row attends the gathered global keys (G, D) of its batch element;
3. the global rows: recomputed as full attention over all T keys (G x T, linear in T), overwriting
   whatever the first two parts gave them.

Only q, k, v, the output and the per-row log-sum-exp are saved for backward, which recomputes the
scores of each part. Causal masking and padding apply to all three parts. Attention dropout
(dropout.py's hash mask, the same as the compiled kernel's and the reference's) is applied in all
three parts, regenerated in backward.
"""
from __future__ import annotations

import torch

from ._band import NEG_INF, BandLayout, band_backward, band_forward
from .dropout import keep_blocks, keep_factor, threshold

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
    dropout: tuple[float, int] | None = None,
) -> torch.Tensor:
    """Longformer attention, exact semantics of `reference_attention`, memory-linear in T.

    q, k, v: (B, H, T, D); dilation: H ints; key_valid, is_global: bool (B, T) or None; dropout:
    (p, seed) or None. Returns (B, H, T, D) in q's dtype. Arguments are assumed checked by
    `sliding_window_attention`.
    """
    return _BlockedAttention.apply(q, k, v, window, tuple(dilation), causal, key_valid, is_global, scale, dropout)


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, dilation, causal, key_valid, is_global, scale, dropout):
        plan = _Plan(q, window, dilation, causal, key_valid, is_global, scale, dropout)
        out, lse = _forward(plan, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(ctx.plan, q, k, v, out, lse, dout)
        return dq, dk, dv, None, None, None, None, None, None, None


class _Plan:
    """Per-call constants: head groups, masks and the statistics dtype."""

    def __init__(self, q, window, dilation, causal, key_valid, is_global, scale, dropout=None):
        B, H, T, D = q.shape
        # dropout: the uint32 threshold (0: none) and seed of dropout.py's mask
        self.drop_thr, self.drop_seed = (threshold(dropout[0]), dropout[1] & 0xFFFFFFFF) if dropout else (0, 0)
        self.B, self.H, self.T, self.device = B, H, T, q.device
        self.window, self.causal, self.scale = window, causal, scale
        self.stat = torch.float64 if q.dtype == torch.float64 else torch.float32
        self.key_valid, self.is_global = key_valid, is_global
        self.groups: dict[int, list[int]] = {}  # dilation -> heads
        for h, r in enumerate(dilation):
            self.groups.setdefault(min(r, max(T, 1)), []).append(h)  # r >= T: every row alone
        self.global_idx = [None] * B
        if is_global is not None:
            for b in range(B):
                idx = is_global[b].nonzero().squeeze(1)
                self.global_idx[b] = idx if idx.numel() else None
        band_ok = key_valid  # keys the band may use: valid and not global
        if is_global is not None:
            band_ok = ~is_global if band_ok is None else band_ok & ~is_global
        self.band_ok = band_ok

    def group(self, r: int, heads: list[int]):
        """(head index, layout, band key mask (N, T') or None) of the head group with dilation r."""
        T = self.T
        Tr = -(-T // r)
        index = heads[0] if len(heads) == 1 else heads  # one head: a view, no gather
        lay = BandLayout.make(self.B * len(heads) * r, Tr, self.window, 0 if self.causal else self.window, BLOCK)
        ok = self.band_ok
        if ok is None and Tr * r != T:
            ok = torch.ones(self.B, T, dtype=torch.bool, device=self.device)
        if ok is not None:
            ok = _split(ok[:, None].expand(self.B, len(heads), T), r, Tr, pad=False)
        return index, lay, ok

    def band_keep(self, r: int, heads: list[int], lay: BandLayout):
        """None, or with dropout the (b0, b1) -> (n, c, L) keep factors of band blocks b0 .. b1 - 1 of the
        head group (sequence n of `_split` is batch element n // (Hg r), head heads[n // r % Hg],
        residue m = n % r; its slot t is position m + t r)."""
        if not self.drop_thr:
            return None
        dev, Hg = self.device, len(heads)
        seq = torch.arange(lay.N, device=dev)
        bh = seq // (Hg * r) * self.H + torch.tensor(heads, device=dev)[seq // r % Hg]
        m = seq % r
        a, l = torch.arange(lay.c, device=dev), torch.arange(lay.L, device=dev)

        def keep(b0: int, b1: int) -> torch.Tensor:
            g = torch.arange(b0, b1, device=dev)
            s, first = g // lay.nb, g % lay.nb * lay.c  # sequence and first slot of each block
            rows = m[s, None] + (first[:, None] + a) * r
            cols = m[s, None] + (first[:, None] - lay.left + l) * r
            return keep_blocks(self.drop_seed, self.drop_thr, bh[s], rows, cols)

        return keep

    def keep(self, b: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
        """None, or with dropout the (H, len(rows), len(cols)) keep factors of batch element b."""
        if not self.drop_thr:
            return None
        return keep_factor(self.drop_seed, self.drop_thr, b, self.H, rows, cols)


def _split(x: torch.Tensor, r: int, Tr: int, pad=0.0) -> torch.Tensor:
    """(B, Hg, T, ...) -> (B * Hg * r, Tr, ...): row i of a head goes to residue i % r, slot i // r."""
    B, Hg, T = x.shape[:3]
    if r == 1:
        return x.reshape(B * Hg, T, *x.shape[3:])
    padded = x.new_full((B, Hg, Tr * r, *x.shape[3:]), pad)
    padded[:, :, :T] = x
    padded = padded.view(B, Hg, Tr, r, *x.shape[3:]).transpose(2, 3)
    return padded.reshape(B * Hg * r, Tr, *x.shape[3:])


def _merge(y: torch.Tensor, B: int, Hg: int, r: int, T: int) -> torch.Tensor:
    """Inverse of `_split`: (B * Hg * r, Tr, ...) -> (B, Hg, T, ...)."""
    Tr = y.shape[1]
    y = y.reshape(B, Hg, r, Tr, *y.shape[2:]).transpose(2, 3)
    return y.reshape(B, Hg, Tr * r, *y.shape[4:])[:, :, :T]


def _heads(x: torch.Tensor, index) -> torch.Tensor:
    return x[:, index : index + 1] if isinstance(index, int) else x[:, index]


def _forward(plan: _Plan, q, k, v):
    B, H, T, D = q.shape
    out = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=plan.stat, device=q.device)
    for r, heads in plan.groups.items():
        index, lay, ok = plan.group(r, heads)
        qs, ks, vs = (_split(_heads(t, index), r, lay.T) for t in (q, k, v))
        o, l = band_forward(qs, ks, vs, ok, lay, plan.scale, plan.stat, ROWS_PER_CHUNK, plan.band_keep(r, heads, lay))
        out[:, heads] = _merge(o, B, len(heads), r, T)
        lse[:, heads] = _merge(l, B, len(heads), r, T)
    for b, idx in enumerate(plan.global_idx):
        if idx is not None:
            _global_forward(plan, b, idx, q[b], k[b], v[b], out[b], lse[b])
    return out, lse


def _backward(plan: _Plan, q, k, v, out, lse, dout):
    B, H, T, D = q.shape
    st = plan.stat
    delta = (dout.to(st) * out.to(st)).sum(-1)  # (B, H, T)
    do_loc, delta_loc = dout, delta
    if plan.is_global is not None:
        # global rows took their output from part 3 only: parts 1 and 2 get no gradient there
        local = ~plan.is_global[:, None, :]  # (B, 1, T)
        do_loc, delta_loc = dout * local[..., None], delta * local
    dq, dk, dv = (torch.empty(B, H, T, D, dtype=st, device=q.device) for _ in range(3))
    for r, heads in plan.groups.items():
        index, lay, ok = plan.group(r, heads)
        args = [_split(_heads(t, index), r, lay.T) for t in (q, k, v)]
        gq, gk, gv = band_backward(
            *args, ok, lay, plan.scale, st, _split(_heads(do_loc, index), r, lay.T),
            _split(_heads(lse, index), r, lay.T), _split(_heads(delta_loc, index), r, lay.T), ROWS_PER_CHUNK,
            plan.band_keep(r, heads, lay),
        )
        for acc, g in ((dq, gq), (dk, gk), (dv, gv)):
            acc[:, heads] = _merge(g, B, len(heads), r, T)
    for b, idx in enumerate(plan.global_idx):
        if idx is not None:
            _global_backward(plan, b, idx, q[b], k[b], v[b], lse[b], dout[b], delta[b], do_loc[b], delta_loc[b],
                             dq[b], dk[b], dv[b])
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


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
    """(H, n, m) masked scaled scores of (H, n, D) rows against (H, m, D) keys."""
    return (a @ b.transpose(-1, -2)).to(plan.stat).mul_(plan.scale).masked_fill_(~allowed, NEG_INF)


def _safe(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf (rows with no key) replaced by 0, so that exp(-inf - lse) = 0, never NaN."""
    return lse.masked_fill(lse == NEG_INF, 0.0)


def _global_forward(plan: _Plan, b, idx, q, k, v, out, lse) -> None:
    """All heads of batch element b, (H, T, D): merge part 2 into (out, lse) in place, then
    overwrite the global rows (part 3)."""
    T = q.shape[1]
    to_glob, _ = _global_masks(plan, b, idx, T)
    kg, vg = k[:, idx], v[:, idx]  # (H, G, D)
    s = _scores(plan, q, kg, to_glob)  # (H, T, G)
    lg = torch.logsumexp(s, dim=-1)
    pg = s.sub_(_safe(lg)[..., None]).exp_()
    keep = plan.keep(b, torch.arange(T, device=idx.device), idx)
    if keep is not None:
        pg = pg.mul_(keep)
    og = pg.to(v.dtype) @ vg
    new = torch.logaddexp(lse, lg)
    wb = (lse - _safe(new)).exp_()[..., None]
    wg = (lg - _safe(new)).exp_()[..., None]
    out.copy_(out.to(plan.stat).mul_(wb).add_(og.to(plan.stat).mul_(wg)))
    lse.copy_(new)
    global_rows_forward(plan, b, idx, q, k, v, out, lse, plan.keep(b, idx, torch.arange(T, device=idx.device)))


def global_rows_forward(plan: _Plan, b, idx, q, k, v, out, lse, keep=None) -> None:
    """Part 3 for batch element b, (H, T, D): the global rows as full attention over every key.
    keep: optional (H, G, T) dropout keep factors (see dropout.py)."""
    _, from_glob = _global_masks(plan, b, idx, q.shape[1])
    s = _scores(plan, q[:, idx], k, from_glob)  # (H, G, T)
    lr = torch.logsumexp(s, dim=-1)
    p = s.sub_(_safe(lr)[..., None]).exp_()
    if keep is not None:
        p = p.mul_(keep)
    out[:, idx] = (p.to(v.dtype) @ v).to(out.dtype)
    lse[:, idx] = lr


def _global_backward(plan: _Plan, b, idx, q, k, v, lse, do, delta, do_loc, delta_loc, dq, dk, dv) -> None:
    """Add the gradients of parts 2 and 3 of batch element b to the (H, T, D) accumulators."""
    T = q.shape[1]
    st, scale = plan.stat, plan.scale
    # scores recomputed as in forward, every other product in the statistics dtype (see band_backward)
    to_glob, _ = _global_masks(plan, b, idx, T)
    s_glob = _scores(plan, q, k[:, idx], to_glob)  # (H, T, G)
    qs, ks, vs, dos = (t.to(st) for t in (q, k, v, do_loc))
    kg, vg = ks[:, idx], vs[:, idx]
    p = s_glob.sub_(_safe(lse)[..., None]).exp_()
    pos = torch.arange(T, device=idx.device)
    keep = plan.keep(b, pos, idx)
    dp = dos @ vg.transpose(-1, -2)
    if keep is None:
        dv.index_add_(1, idx, p.transpose(-1, -2) @ dos)
    else:  # dropout: dV takes P k, and dS = P (dP k - delta)
        dv.index_add_(1, idx, (p * keep).transpose(-1, -2) @ dos)
        dp.mul_(keep)
    ds = dp.sub_(delta_loc[..., None]).mul_(p)
    dq.add_(ds @ kg, alpha=scale)
    dk.index_add_(1, idx, ds.transpose(-1, -2) @ qs, alpha=scale)
    global_rows_backward(plan, b, idx, q, k, v, lse, do, delta, dq, dk, dv, plan.keep(b, idx, pos))


def global_rows_backward(plan: _Plan, b, idx, q, k, v, lse, do, delta, dq, dk, dv, keep=None) -> None:
    """Add the gradients of part 3 (the global rows) of batch element b to the accumulators.
    keep: the forward's (H, G, T) dropout keep factors, or None."""
    st, scale = plan.stat, plan.scale
    T = q.shape[1]
    qg, kf, vf, dog = q[:, idx].to(st), k.to(st), v.to(st), do[:, idx].to(st)
    if q.dtype == st:
        # P = exp(scale q k^T - lse) with the subtraction folded into the product (baddbmm), and below
        # dP - delta likewise: two passes over the (H, G, T) scores instead of eight (measured at
        # T=4096, H=12, G=64: 36.6 -> 31.7 ms)
        p = torch.baddbmm(-_safe(lse[:, idx])[..., None], qg * scale, kf.transpose(-1, -2))
        allowed = _rows_allowed(plan, b, idx, T)
        if allowed is not None:
            p.masked_fill_(~allowed, NEG_INF)
    else:  # low-precision inputs: the scores exactly as global_rows_forward made them (matching lse)
        p = _scores(plan, q[:, idx], k, _global_masks(plan, b, idx, T)[1]).sub_(_safe(lse[:, idx])[..., None])
    p = p.exp_()
    # (T x G) @ (G x D) products land in dk/dv in place: no (H, T, D) temporaries
    if keep is None:
        dv.baddbmm_(p.transpose(-1, -2), dog)
        ds = torch.baddbmm(-delta[:, idx].to(st)[..., None], dog, vf.transpose(-1, -2)).mul_(p)
    else:  # dropout: dV takes P k, and dS = P (dP k - delta)
        dv.baddbmm_((p * keep).transpose(-1, -2), dog)
        ds = (dog @ vf.transpose(-1, -2)).mul_(keep).sub_(delta[:, idx][..., None]).mul_(p)
    dq.index_add_(1, idx, ds @ kf, alpha=scale)
    dk.baddbmm_(ds.transpose(-1, -2), qg, alpha=scale)


def _rows_allowed(plan: _Plan, b: int, idx: torch.Tensor, T: int) -> torch.Tensor | None:
    """The (G, T) mask of global rows x keys, or None when every key is allowed."""
    if plan.key_valid is None and not plan.causal:
        return None
    return _global_masks(plan, b, idx, T)[1]
