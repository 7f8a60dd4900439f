"""The undilated band of one head over one sequence, forward and backward, in query blocks.

A band of ``left`` keys before and ``right`` keys after each query is computed in blocks of ``c``
query rows. Block ``n`` needs the contiguous keys ``[n*c - left, n*c - left + L)`` with
``L >= c + left + right`` rounded up to a multiple of ``c``. With the keys padded by ``left`` zeros
in front, these windows are overlapping slices of one buffer, taken with ``as_strided`` (no copy),
so each block is one small GEMM against its window and nothing of size T x T ever exists.

Inside a (c, L) block, key ``l`` is in the band of query row ``a`` iff ``0 <= l - a <= left + right``:
the same pattern for every block, so one (c, L) additive bias serves all of them. Only blocks whose
window touches a masked key (sequence ends, padding, keys handled elsewhere) get a per-key bias too.

Backward recomputes the scores from the saved log-sum-exp (flash-attention style). Key windows
overlap, so their gradients are accumulated into a padded buffer with ``L / c`` shifted adds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class BandLayout:
    """Geometry of the blocked band for a sequence of T rows."""

    T: int
    left: int  # keys before the query (w, clipped to T - 1)
    right: int  # keys after the query (0 when causal)
    c: int  # query rows per block
    nb: int  # number of blocks
    L: int  # keys per window, a multiple of c
    Tp: int  # rows of the padded key buffer

    @staticmethod
    def make(T: int, left: int, right: int, block: int) -> "BandLayout":
        left, right = min(left, T - 1), min(right, T - 1)  # farther keys never exist
        c = max(1, min(block, T))
        nb = -(-T // c)
        L = -(-(c + left + right) // c) * c
        return BandLayout(T, left, right, c, nb, L, (nb - 1) * c + L)


def band_bias(lay: BandLayout, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, c, L) additive bias: 0 where key l of a window is in the band of row a, -inf elsewhere."""
    a = torch.arange(lay.c, device=device)[:, None]
    l = torch.arange(lay.L, device=device)[None, :]
    d = l - a
    ok = (d >= 0) & (d <= lay.left + lay.right)
    return torch.zeros(1, lay.c, lay.L, dtype=dtype, device=device).masked_fill_(~ok, NEG_INF)


def key_bias(lay: BandLayout, key_ok: torch.Tensor | None, dtype: torch.dtype, device: torch.device):
    """Per-window key bias (nb, L) and the bool (nb,) of blocks that need it, or (None, None).

    A window key is masked when it lies outside the sequence or ``key_ok`` is False there.
    """
    ok = torch.zeros(lay.Tp, dtype=torch.bool, device=device)
    if key_ok is None:
        ok[lay.left : lay.left + lay.T] = True
    else:
        ok[lay.left : lay.left + lay.T] = key_ok
    win = ok.as_strided((lay.nb, lay.L), (lay.c, 1))  # (nb, L) overlapping windows
    needs = ~win.all(dim=-1)
    if not bool(needs.any()):
        return None, None
    bias = torch.zeros(lay.nb, lay.L, dtype=dtype, device=device).masked_fill_(~win, NEG_INF)
    return bias, needs


def _pad_rows(x: torch.Tensor, front: int, total: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy (T, D) x into a zero (total, D) buffer at row ``front``."""
    out = x.new_zeros(total, x.shape[-1], dtype=dtype or x.dtype)
    out[front : front + x.shape[0]] = x
    return out


def _windows(xp: torch.Tensor, lay: BandLayout) -> torch.Tensor:
    """(nb, L, D) overlapping windows of the padded (Tp, D) buffer, without a copy."""
    D = xp.shape[-1]
    return xp.as_strided((lay.nb, lay.L, D), (lay.c * D, D, 1))


class _Scores:
    """Computes the masked, scaled fp32 (or fp64) scores of a range of blocks."""

    def __init__(self, qb, kwin, lay: BandLayout, key_ok, scale: float, stat: torch.dtype):
        self.qb, self.kwin, self.scale, self.stat = qb, kwin, scale, stat
        self.bbias = band_bias(lay, stat, qb.device)
        self.kbias, self.needs = key_bias(lay, key_ok, stat, qb.device)

    def __call__(self, b0: int, b1: int) -> torch.Tensor:
        q, kT = self.qb[b0:b1], self.kwin[b0:b1].transpose(1, 2)
        if q.dtype == self.stat:
            # bias + scale * q k^T inside the GEMM call: no extra pass over the scores
            s = torch.baddbmm(self.bbias, q, kT, alpha=self.scale)
        else:
            s = self.bbias.add(torch.bmm(q, kT), alpha=self.scale)  # low precision products, fp32 sum
        if self.kbias is not None:
            needs = self.needs[b0:b1]
            if bool(needs.all()):
                s.add_(self.kbias[b0:b1, None, :])
            elif bool(needs.any()):
                ids = needs.nonzero().squeeze(1)
                s[ids] += self.kbias[b0:b1][ids, None, :]
        return s


def _chunks(lay: BandLayout, rows_per_chunk: int):
    step = max(1, rows_per_chunk // lay.c)
    for b0 in range(0, lay.nb, step):
        yield b0, min(lay.nb, b0 + step)


def band_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_ok: torch.Tensor | None,
    lay: BandLayout,
    scale: float,
    stat: torch.dtype,
    rows_per_chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Band attention of one sequence. q, k, v: (T, D); key_ok: bool (T,) or None.

    Returns the normalised output (T, D) in v's dtype and the log-sum-exp (T,) in ``stat`` dtype
    (-inf for a row with no key in its band; its output is 0).
    """
    T, D = q.shape
    qb = _pad_rows(q, 0, lay.nb * lay.c).view(lay.nb, lay.c, D)
    kwin = _windows(_pad_rows(k, lay.left, lay.Tp), lay)
    vwin = _windows(_pad_rows(v, lay.left, lay.Tp), lay)
    scores = _Scores(qb, kwin, lay, key_ok, scale, stat)
    out = q.new_empty(lay.nb, lay.c, D)
    lse = torch.empty(lay.nb, lay.c, dtype=stat, device=q.device)
    for b0, b1 in _chunks(lay, rows_per_chunk):
        s = scores(b0, b1)  # (n, c, L)
        m = s.amax(dim=-1, keepdim=True)  # (n, c, 1); subtracting the max keeps exp exact-ish
        m.masked_fill_(m == NEG_INF, 0.0)  # a row with no key: exp(-inf - 0) = 0, not NaN
        p = s.sub_(m).exp_()
        l = p.sum(dim=-1, keepdim=True)  # (n, c, 1)
        o = torch.bmm(p.to(v.dtype), vwin[b0:b1], out=out[b0:b1])
        o.div_(l.clamp_min(torch.finfo(stat).tiny))  # empty rows: 0 / tiny = 0
        lse[b0:b1] = (m + l.log()).squeeze(-1)  # log(0) = -inf for empty rows
    return out.view(-1, D)[:T], lse.view(-1)[:T]


def band_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_ok: torch.Tensor | None,
    lay: BandLayout,
    scale: float,
    stat: torch.dtype,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    rows_per_chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the band part. dout: (T, D); lse, delta: (T,) final per-row statistics.

    ``lse`` is the row's log-sum-exp over everything it attends (band and other parts), so
    ``exp(s - lse)`` are this part's probabilities in the final softmax; ``delta`` is
    ``sum(dout * out)`` of the row. Returns dq, dk, dv (T, D) in ``stat`` dtype.
    """
    T, D = q.shape
    c, nb = lay.c, lay.nb
    # The scores are recomputed exactly as in forward (same dtype, same GEMMs), so that they match
    # the saved log-sum-exp. Every other product runs in the statistics dtype: low-precision
    # rounding of dP would not cancel against delta (computed from the output), and overlapping
    # window gradients would be rounded once per window.
    qb_in = _pad_rows(q, 0, nb * c).view(nb, c, D)
    kp_in = _pad_rows(k, lay.left, lay.Tp)
    scores = _Scores(qb_in, _windows(kp_in, lay), lay, key_ok, scale, stat)
    if q.dtype == stat:
        qb, kwin = qb_in, _windows(kp_in, lay)
    else:
        qb, kwin = qb_in.to(stat), _windows(kp_in.to(stat), lay)
    vwin = _windows(_pad_rows(v, lay.left, lay.Tp, stat), lay)
    dob = _pad_rows(dout, 0, nb * c, stat).view(nb, c, D)
    lse_b = torch.zeros(nb * c, dtype=stat, device=q.device)
    lse_b[:T] = lse.masked_fill(lse == NEG_INF, 0.0)  # empty rows: every s is -inf, so p = 0
    lse_b = lse_b.view(nb, c, 1)
    delta_b = torch.zeros(nb * c, dtype=stat, device=q.device)
    delta_b[:T] = delta
    delta_b = delta_b.view(nb, c, 1)
    dq = torch.empty(nb, c, D, dtype=stat, device=q.device)
    m = lay.L // c
    # windows overlap: block n's window is rows [n*c, n*c + L) of these padded buffers
    dkp = torch.zeros(nb + m - 1, c, D, dtype=stat, device=q.device)
    dvp = torch.zeros(nb + m - 1, c, D, dtype=stat, device=q.device)
    for b0, b1 in _chunks(lay, rows_per_chunk):
        p = scores(b0, b1).sub_(lse_b[b0:b1]).exp_()  # (n, c, L)
        do = dob[b0:b1]
        dv_win = torch.bmm(p.transpose(1, 2), do)  # (n, L, D)
        ds = torch.bmm(do, vwin[b0:b1].transpose(1, 2)).sub_(delta_b[b0:b1]).mul_(p)  # (n, c, L)
        torch.bmm(ds, kwin[b0:b1], out=dq[b0:b1])
        dk_win = torch.bmm(ds.transpose(1, 2), qb[b0:b1])  # (n, L, D)
        for j in range(m):
            dkp[b0 + j : b1 + j] += dk_win[:, j * c : (j + 1) * c]
            dvp[b0 + j : b1 + j] += dv_win[:, j * c : (j + 1) * c]
    dq = dq.view(-1, D)[:T].mul_(scale)
    dk = dkp.view(-1, D)[lay.left : lay.left + T].mul_(scale)
    dv = dvp.view(-1, D)[lay.left : lay.left + T]
    return dq, dk, dv
