"""The undilated band of N sequences of T rows at once, forward and backward, in query blocks.

A band of ``left`` keys before and ``right`` keys after each query is computed in blocks of ``c``
query rows. Block ``n`` needs the contiguous keys ``[n*c - left, n*c - left + L)`` with
``L >= c + left + right`` rounded up to a multiple of ``c``. The keys of all N sequences are packed
into one zero buffer, sequence ``s`` starting at row ``s*S + left`` with ``S = nb*c``; block ``n`` of
sequence ``s`` then reads rows ``[(s*nb + n)*c, (s*nb + n)*c + L)``, so the windows of every block
of every sequence are one ``as_strided`` view with a uniform stride of ``c`` rows (no copy), and
each chunk of blocks is ONE batched GEMM, whatever N. A window may run into the next sequence's
rows: those keys are out of range for its block and masked, so they never count.

Inside a (c, L) block, key ``l`` is in the band of query row ``a`` iff ``0 <= l - a <= left + right``:
the same pattern for every block, so one (c, L) additive bias serves all of them. Only blocks whose
window touches a masked key (sequence ends, padding, keys handled elsewhere) get a per-key bias too.

Backward recomputes the scores from the saved log-sum-exp (flash-attention style). Key windows
overlap, so their gradients are accumulated into a packed buffer with ``L / c`` shifted adds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class BandLayout:
    """Geometry of the blocked band for N sequences of T rows."""

    N: int
    T: int
    left: int  # keys before the query (w, clipped to T - 1)
    right: int  # keys after the query (0 when causal)
    c: int  # query rows per block
    nb: int  # blocks per sequence
    L: int  # keys per window, a multiple of c

    @staticmethod
    def make(N: int, T: int, left: int, right: int, block: int) -> "BandLayout":
        left, right = min(left, T - 1), min(right, T - 1)  # farther keys never exist
        c = max(1, min(block, T))
        nb = -(-T // c)
        L = -(-(c + left + right) // c) * c
        return BandLayout(N, T, left, right, c, nb, L)

    @property
    def S(self) -> int:  # rows between the starts of two packed sequences
        return self.nb * self.c

    @property
    def rows(self) -> int:  # rows of a packed key buffer
        return self.N * self.S + self.L - self.c

    @property
    def blocks(self) -> int:
        return self.N * self.nb


def _packed_seq(buf: torch.Tensor, lay: BandLayout) -> torch.Tensor:
    """(N, T, ...) view of the data rows of a packed (rows, ...) buffer."""
    inner = buf.shape[1:]
    step = buf.stride(0)
    return buf.as_strided((lay.N, lay.T, *inner), (lay.S * step, step, *buf.stride()[1:]), lay.left * step)


def pack_keys(x: torch.Tensor, lay: BandLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, T, D) -> zero (rows, D) buffer with sequence s at rows s*S + left."""
    buf = x.new_zeros(lay.rows, x.shape[-1], dtype=dtype or x.dtype)
    _packed_seq(buf, lay).copy_(x)
    return buf


def pack_rows(x: torch.Tensor, lay: BandLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, T, ...) -> (N * nb, c, ...) query blocks, rows past T zero."""
    buf = x.new_zeros(lay.N, lay.S, *x.shape[2:], dtype=dtype or x.dtype)
    buf[:, : lay.T] = x
    return buf.view(lay.blocks, lay.c, *x.shape[2:])


def unpack_rows(blocks: torch.Tensor, lay: BandLayout) -> torch.Tensor:
    return blocks.reshape(lay.N, lay.S, *blocks.shape[2:])[:, : lay.T]


def windows(buf: torch.Tensor, lay: BandLayout) -> torch.Tensor:
    """(N * nb, L, D) overlapping key windows of a packed buffer, without a copy."""
    D = buf.shape[-1]
    return buf.as_strided((lay.blocks, lay.L, D), (lay.c * D, D, 1))


def band_bias(lay: BandLayout, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, c, L) additive bias: 0 where key l of a window is in the band of row a, -inf elsewhere."""
    a = torch.arange(lay.c, device=device)[:, None]
    l = torch.arange(lay.L, device=device)[None, :]
    d = l - a
    ok = (d >= 0) & (d <= lay.left + lay.right)
    return torch.zeros(1, lay.c, lay.L, dtype=dtype, device=device).masked_fill_(~ok, NEG_INF)


def key_bias(lay: BandLayout, key_ok: torch.Tensor | None, dtype: torch.dtype, device: torch.device):
    """Per-window key bias (N * nb, L) and the bool (N * nb,) of blocks that need it.

    A window key is masked when it lies outside its sequence or ``key_ok`` (N, T) is False there.
    """
    ok = torch.zeros(lay.rows, dtype=torch.bool, device=device)
    seq = _packed_seq(ok, lay)
    seq.fill_(True) if key_ok is None else seq.copy_(key_ok)
    win = ok.as_strided((lay.N, lay.nb, lay.L), (lay.S, lay.c, 1))
    # windows run into the neighbouring sequences' rows (before 0, after T): out of range there
    pos = torch.arange(lay.nb, device=device)[:, None] * lay.c - lay.left + torch.arange(lay.L, device=device)
    win = (win & (pos >= 0) & (pos < lay.T)).reshape(lay.blocks, lay.L)
    needs = ~win.all(dim=-1)
    bias = torch.zeros(lay.blocks, lay.L, dtype=dtype, device=device).masked_fill_(~win, NEG_INF)
    return bias, needs


class _Scores:
    """Computes the masked, scaled scores (fp32, or fp64 for fp64 input) of a range of blocks."""

    def __init__(self, qb, kwin, lay: BandLayout, key_ok, scale: float, stat: torch.dtype):
        self.qb, self.kwin, self.scale, self.stat = qb, kwin, scale, stat
        self.bbias = band_bias(lay, stat, qb.device)
        self.kbias, self.needs = key_bias(lay, key_ok, stat, qb.device)
        self.masked_rows_possible = key_ok is not None  # else every row sees at least itself

    def __call__(self, b0: int, b1: int) -> torch.Tensor:
        q, kT = self.qb[b0:b1], self.kwin[b0:b1].transpose(1, 2)
        if q.dtype == self.stat:
            # bias + scale * q k^T inside the GEMM call: no extra pass over the scores
            s = torch.baddbmm(self.bbias, q, kT, alpha=self.scale)
        else:
            s = self.bbias.add(torch.bmm(q, kT), alpha=self.scale)  # low precision products, fp32 sum
        # blocks needing the key bias come in short runs (the ends of each sequence, padding):
        # add it slice by slice, cheaper than gathering and scattering the score tiles
        for r0, r1 in self.runs(b0, b1):
            s[r0 - b0 : r1 - b0].add_(self.kbias[r0:r1, None, :])
        return s

    def runs(self, b0: int, b1: int) -> list[tuple[int, int]]:
        ids = (self.needs[b0:b1].nonzero().squeeze(1) + b0).tolist()
        out: list[tuple[int, int]] = []
        for i in ids:
            if out and out[-1][1] == i:
                out[-1] = (out[-1][0], i + 1)
            else:
                out.append((i, i + 1))
        return out


def _chunks(lay: BandLayout, rows_per_chunk: int):
    step = max(1, rows_per_chunk // lay.c)
    for b0 in range(0, lay.blocks, step):
        yield b0, min(lay.blocks, b0 + step)


def band_forward(q, k, v, key_ok, lay: BandLayout, scale: float, stat: torch.dtype, rows_per_chunk: int, keep=None):
    """Band attention of N sequences. q, k, v: (N, T, D); key_ok: bool (N, T) or None; keep: None, or
    for dropout a function (b0, b1) -> (b1 - b0, c, L) keep factors of blocks b0 .. b1 - 1.

    Returns the normalised output (N, T, D) in v's dtype and the log-sum-exp (N, T) in ``stat``
    (-inf for a row with no key in its band; its output is 0).
    """
    D = q.shape[-1]
    qb = pack_rows(q, lay)
    kwin, vwin = windows(pack_keys(k, lay), lay), windows(pack_keys(v, lay), lay)
    scores = _Scores(qb, kwin, lay, key_ok, scale, stat)
    out = q.new_empty(lay.blocks, lay.c, D)
    lse = torch.empty(lay.blocks, lay.c, dtype=stat, device=q.device)
    for b0, b1 in _chunks(lay, rows_per_chunk):
        s = scores(b0, b1)  # (n, c, L)
        m = s.amax(dim=-1)  # (n, c)
        # one fused softmax kernel instead of separate max/sub/exp/sum passes over the scores;
        # the log-sum-exp follows from the largest probability: p_max = exp(m - lse)
        p = torch.softmax(s, dim=-1)
        del s
        lse[b0:b1] = m - p.amax(dim=-1).log()
        if scores.masked_rows_possible:
            empty = m == NEG_INF  # rows with no key in the band: softmax gives NaN there
            if bool(empty.any()):
                p = p.nan_to_num_(0.0)
                lse[b0:b1].masked_fill_(empty, NEG_INF)
        if keep is not None:  # after the statistics: the normaliser is that of the undropped probabilities
            p = p.mul_(keep(b0, b1))
        torch.bmm(p.to(v.dtype), vwin[b0:b1], out=out[b0:b1])
    return unpack_rows(out, lay), unpack_rows(lse, lay)


def band_backward(q, k, v, key_ok, lay: BandLayout, scale: float, stat: torch.dtype, dout, lse, delta,
                  rows_per_chunk: int, keep=None):
    """Gradients of the band part. dout: (N, T, D); lse, delta: (N, T) final per-row statistics.

    ``lse`` is the row's log-sum-exp over everything it attends (band and other parts), so
    ``exp(s - lse)`` are this part's probabilities in the final softmax; ``delta`` is
    ``sum(dout * out)`` of the row. Returns dq, dk, dv (N, T, D) in ``stat``.
    """
    D = q.shape[-1]
    c, m = lay.c, lay.L // lay.c
    # The scores are recomputed exactly as in forward (same dtype, same GEMMs), so that they match
    # the saved log-sum-exp. Every other product runs in the statistics dtype: low-precision
    # rounding of dP would not cancel against delta (computed from the output), and overlapping
    # window gradients would be rounded once per window.
    qb_in, kp_in = pack_rows(q, lay), pack_keys(k, lay)
    scores = _Scores(qb_in, windows(kp_in, lay), lay, key_ok, scale, stat)
    if q.dtype == stat:
        qb, kwin = qb_in, windows(kp_in, lay)
    else:
        qb, kwin = qb_in.to(stat), windows(kp_in.to(stat), lay)
    vwin = windows(pack_keys(v, lay, stat), lay)
    dob = pack_rows(dout, lay, stat)
    lse_b = pack_rows(lse.masked_fill(lse == NEG_INF, 0.0), lay).unsqueeze(-1)  # empty rows: p = 0
    delta_b = pack_rows(delta, lay).unsqueeze(-1)
    dq = torch.empty(lay.blocks, c, D, dtype=stat, device=q.device)
    # block g's window is rows [g*c, g*c + L) of these packed buffers, i.e. blocks g .. g + m - 1
    dkp = torch.zeros(lay.blocks + m - 1, c, D, dtype=stat, device=q.device)
    dvp = torch.zeros(lay.blocks + m - 1, c, D, dtype=stat, device=q.device)
    for b0, b1 in _chunks(lay, rows_per_chunk):
        p = scores(b0, b1).sub_(lse_b[b0:b1]).exp_()  # (n, c, L)
        do = dob[b0:b1]
        dp = torch.bmm(do, vwin[b0:b1].transpose(1, 2))  # (n, c, L)
        if keep is None:
            dv_win = torch.bmm(p.transpose(1, 2), do)  # (n, L, D)
        else:  # dropout (keep factors k): dV takes P k, and dS = P (dP k - delta)
            kf = keep(b0, b1).to(stat)
            dv_win = torch.bmm((p * kf).transpose(1, 2), do)
            dp.mul_(kf)
            del kf
        ds = dp.sub_(delta_b[b0:b1]).mul_(p)
        del p
        torch.bmm(ds, kwin[b0:b1], out=dq[b0:b1])
        dk_win = torch.bmm(ds.transpose(1, 2), qb[b0:b1])  # (n, L, D)
        for j in range(m):
            dkp[b0 + j : b1 + j] += dk_win[:, j * c : (j + 1) * c]
            dvp[b0 + j : b1 + j] += dv_win[:, j * c : (j + 1) * c]
    dk = _packed_seq(dkp.view(-1, D), lay).mul_(scale)
    dv = _packed_seq(dvp.view(-1, D), lay)
    return unpack_rows(dq, lay).mul_(scale), dk, dv
