"""The export-friendly kernel: the exact pattern from standard tensor ops, memory-linear in T.

Made for graph exporters (ONNX through ``torch.onnx.export(..., dynamo=True)``, ``torch.export``):
every tensor has a static rank, sizes follow the symbolic length T, and nothing is T x T. There is
no custom op, no ``as_strided`` (whose export silently broke other Longformer exports) and no Python
loop over data. Three parts share ONE softmax per row (no log-sum-exp merging needed):

1. the band, in blocks: heads are grouped by dilation r; a head's rows split by ``i mod r`` into r
   undilated sequences (DESIGN.md's trick). Each sequence is cut into blocks of ``c >= w`` rows;
   block n's keys are blocks n-1, n, n+1 side by side (n-1, n when causal): a ``(c, 3c)`` score tile
   per block, built with pad + slice + concat. Global keys are masked out of the band so that they
   count once;
2. the global keys: every row scores the G gathered global keys of its batch element, concatenated
   to its band scores before the softmax;
3. the global rows: G x T full attention, written over the first two parts' result.

G is the largest number of global tokens in any batch row (at least 1, so no tensor is empty):
rows with fewer have filler slots that are masked. It is data-dependent; an exporter records it as
an unbacked size (``torch.export``) and the ONNX graph computes it at run time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_BLOCK = 16  # rows per band block at least: tiny windows would otherwise make many tiny GEMMs


def exportable_attention(
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
    """Longformer attention with the exact semantics of `reference_attention`, export-friendly.

    q, k, v: (B, H, T, D); dilation: H ints; key_valid, is_global: bool (B, T) or None. Returns
    (B, H, T, D) in q's dtype; a row with nothing to attend is 0. Arguments are assumed checked by
    `sliding_window_attention`. Differentiable through autograd (no custom backward).
    """
    B, H, T, D = q.shape
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    band_ok = key_valid  # keys the band may use: valid and not global
    glob = None
    if is_global is not None:
        band_ok = ~is_global if band_ok is None else band_ok & ~is_global
        glob = GlobalSlots(is_global, key_valid)
    groups: dict[int, list[int]] = {}  # dilation -> heads
    for h, r in enumerate(dilation):
        groups.setdefault(r, []).append(h)
    outs, order = [], []
    for r, heads in groups.items():
        one = len(groups) == 1
        sub = (lambda t: t) if one else (lambda t: t[:, heads])  # noqa: E731 (a constant index per group)
        outs.append(_band_group(sub(q), sub(k), sub(v), r, window, causal, band_ok, glob, scale, stat))
        order += heads
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)[:, _inverse(order)]
    if glob is not None:
        out = glob.write_rows(out, glob.attend_rows(glob.take(q), k, v, causal, key_valid, scale, stat))
    return out


def _inverse(order: list[int]) -> list[int]:
    inv = [0] * len(order)
    for i, h in enumerate(order):
        inv[h] = i
    return inv


class GlobalSlots:
    """The global positions of each batch row, G slots wide (globals first, in order, then fillers)."""

    def __init__(self, is_global: torch.Tensor, key_valid: torch.Tensor | None) -> None:
        B, T = is_global.shape
        counts = is_global.sum(dim=1)  # (B,)
        # at least one slot: no zero-size tensors in the graph, whatever the input
        G = counts.max().clamp(min=1).item()  # a Python int; under export an unbacked size (no int(): a guard)
        torch._check(G >= 1)
        torch._check(G <= T)
        pos = torch.arange(T, device=is_global.device)
        key = torch.where(is_global, pos, pos + T)  # distinct keys: the sort order is unambiguous
        self.pos = torch.sort(key, dim=1).indices[:, :G]  # (B, G) positions
        self.real = torch.arange(G, device=pos.device)[None, :] < counts[:, None]  # (B, G) slot holds a global
        # a global key is attended only where it is also a valid (unpadded) key
        self.key_ok = self.real if key_valid is None else self.real & key_valid.gather(1, self.pos)
        self.is_global, self.G, self.T = is_global, G, T

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hx, T, D) -> (B, Hx, G, D): the rows at the global positions."""
        B, Hx, _, D = x.shape
        return x.gather(2, self.pos[:, None, :, None].expand(B, Hx, self.G, D))

    def attend_rows(self, q_rows, k, v, causal, key_valid, scale, stat) -> torch.Tensor:
        """Part 3: global query rows as full attention over every allowed key, (G x T) per head.

        q_rows: (B, H, G, D), the queries at the global slots (`take(q)`, or projected from the global
        rows alone, as the encoder's separate global projections do). k, v: (B, H, T, D). Returns the
        rows (B, H, G, D) for `write_rows`; a slot with no allowed key gets 0."""
        B, H, T, D = k.shape
        G = q_rows.shape[2]  # self.G, read from a tensor: a bare size would not pass into torch.cond's branches
        s = _scores(q_rows, k, scale, stat)  # (B, H, G, T)
        allowed = torch.ones(B, 1, G, T, dtype=torch.bool, device=k.device)
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, None, :]
        if causal:
            allowed = allowed & (torch.arange(T, device=k.device)[None, None, :] <= self.pos[:, :, None])[:, None]
        p, has_any = masked_softmax(s, allowed)
        return torch.matmul(p.to(v.dtype), v) * has_any.to(v.dtype)

    def write_rows(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """out (B, H, T, D) with each global position's row replaced by its slot's row of ``rows``
        (B, H, G, D); the filler slots are dropped."""
        B, H, T, D = out.shape
        G = rows.shape[2]  # self.G (see attend_rows)
        # position t of a global row takes slot (number of globals before t): one flat gather
        slot = (torch.cumsum(self.is_global.long(), dim=1) - 1).clamp(min=0)  # (B, T)
        flat = (slot + torch.arange(B, device=out.device)[:, None] * G).reshape(-1)
        rows = rows.transpose(1, 2).reshape(B * G, H * D).index_select(0, flat)
        rows = rows.reshape(B, T, H, D).transpose(1, 2)
        return torch.where(self.is_global[:, None, :, None], rows.to(out.dtype), out)


MASKED = -1e30  # a finite -inf: exp(MASKED - max) is exactly 0 beside any real score, never NaN


def masked_softmax(s: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis of the allowed scores, and the (..., 1) mask of rows that have an
    allowed key. A row with none gets finite (uniform) probabilities: the caller multiplies its
    output, far smaller than the scores, by the mask. One additive bias, broadcast over heads, is
    one pass over the scores (a where per condition would be one each)."""
    bias = torch.where(allowed, 0.0, MASKED).to(s.dtype)
    return torch.softmax(s + bias, dim=-1), allowed.any(dim=-1, keepdim=True)


def _scores(a: torch.Tensor, b: torch.Tensor, scale: float, stat: torch.dtype) -> torch.Tensor:
    """Scaled scores ``scale * a @ b^T`` in ``stat``. fp32/fp64: the scale folded into ``a`` (a pass
    over (n, D) instead of over the scores); low precision: products in the input dtype, as the
    reference rounds them."""
    if a.dtype == stat:
        return torch.matmul(a * scale, b.transpose(-1, -2))
    return torch.matmul(a, b.transpose(-1, -2)).to(stat) * scale


def _band_group(q, k, v, r: int, w: int, causal: bool, band_ok, glob: GlobalSlots | None, scale: float,
                stat: torch.dtype) -> torch.Tensor:
    """Parts 1 and 2 for the heads of one dilation r. q, k, v: (B, Hg, T, D) -> (B, Hg, T, D)."""
    B, Hg, T, D = q.shape
    c = max(w, MIN_BLOCK)  # block rows; c >= w, so a block's keys lie in it and its two neighbours
    nb = (T + r * c - 1) // (r * c)  # blocks per residue sequence: ceil(ceil(T / r) / c)
    n_keys = 2 if causal else 3  # neighbour blocks per window (previous, own[, next])
    L = n_keys * c
    qb = _blocks(q, r, c, nb)  # (B, Hg, r, nb, c, D)
    # Each block's keys: its window, then (with global tokens) the G global keys, side by side in ONE
    # tensor, so that one product gives all the scores a row's softmax needs. Concatenating the keys
    # (rows of D) instead of the scores (rows of L + G) moves D / (L + G) as many bytes.
    extra_k = extra_v = None
    if glob is not None:
        extra_k, extra_v = (glob.take(t)[:, :, None, None].expand(B, Hg, r, nb, glob.G, D) for t in (k, v))
    kw = _windows(_blocks(k, r, c, nb), nb, n_keys, extra_k)  # (B, Hg, r, nb, L [+ G], D)
    vw = _windows(_blocks(v, r, c, nb), nb, n_keys, extra_v)
    ok = torch.ones(B, T, dtype=torch.bool, device=q.device) if band_ok is None else band_ok
    ok = _windows(_blocks(ok[:, None, :, None], r, c, nb), nb, n_keys)  # (B, 1, r, nb, L, 1): False past T
    a = torch.arange(c, device=q.device)[:, None]
    rel = torch.arange(L, device=q.device)[None, :] - c - a  # key offset from the query, in its sequence
    in_band = (rel >= -w) & (rel <= (0 if causal else w))  # (c, L)
    allowed = in_band & ok[..., 0][..., None, :]  # (B, 1, r, nb, c, L)
    s = _scores(qb, kw, scale, stat)  # (B, Hg, r, nb, c, L [+ G])
    if glob is not None:
        G = glob.G
        g_ok = glob.key_ok[:, None, None, None, None, :]  # (B, 1, 1, 1, 1, G)
        if causal:
            i = _positions(r, c, nb, q.device)  # (r, nb, c): original position of each query row
            g_ok = g_ok & (glob.pos[:, None, None, None, None, :] <= i[None, None, ..., None])
        shape = (B, 1, r, nb, c)
        allowed = torch.cat([allowed.expand(*shape, L), g_ok.expand(*shape, G)], dim=-1)
    p, has_any = masked_softmax(s, allowed)
    o = torch.matmul(p.to(v.dtype), vw)  # (B, Hg, r, nb, c, D)
    o = o * has_any.to(o.dtype)
    # back to positions: position t sits in residue t % r at slot t // r. A gather of exactly T rows
    # rather than a slice of the padded ones, whose length the tracer cannot prove to be T
    t = torch.arange(T, device=q.device)
    return o.reshape(B, Hg, r * nb * c, D).index_select(2, (t % r) * (nb * c) + t // r)


def _blocks(x: torch.Tensor, r: int, c: int, nb: int) -> torch.Tensor:
    """(B, Hx, T, E) -> (B, Hx, r, nb, c, E): position t = (n c + a) r + m goes to [m, n, a]; the
    positions past T are zero (False for a bool mask)."""
    B, Hx, T, E = x.shape
    x = F.pad(x, (0, 0, 0, nb * c * r - T))
    return x.reshape(B, Hx, nb * c, r, E).transpose(2, 3).reshape(B, Hx, r, nb, c, E)


def _windows(xb: torch.Tensor, nb: int, n_keys: int, extra: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Hx, r, nb, c, E) blocks -> (B, Hx, r, nb, n_keys * c [+ G], E) key windows: blocks n-1, n
    (, n+1) side by side, zero (False) beyond the sequence's ends, then `extra` (B, Hx, r, nb, G, E)."""
    padded = F.pad(xb, (0, 0, 0, 0, 1, n_keys - 2))  # one zero block before, one after unless causal
    parts = [padded[:, :, :, j : j + nb] for j in range(n_keys)]
    return torch.cat(parts if extra is None else [*parts, extra], dim=-2)


def _positions(r: int, c: int, nb: int, device: torch.device) -> torch.Tensor:
    """(r, nb, c) original position of the query at [m, n, a]: (n c + a) r + m."""
    t = torch.arange(nb * c, device=device).reshape(nb, c)
    return t[None] * r + torch.arange(r, device=device)[:, None, None]
