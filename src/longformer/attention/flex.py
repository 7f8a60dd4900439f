"""Longformer attention on torch's FlexAttention, with block masks built from the pattern itself.

Two kinds of flex calls, each exact on its own, so no log-sum-exp merging is needed:

A. **local rows**, one call per group of heads sharing a dilation r. The sequence of such a head is
   split by ``i mod r`` into r interleaved sub-sequences (DESIGN.md), in which the dilated window is a
   plain window of w slots. Each (head, residue) is one flex "head" of ``Tp`` slots (the
   sub-sequence length, rounded up). Its keys are the ``Tp`` band slots followed by the ``G``
   gathered global keys of the batch element, so every row sees its window (global keys masked out
   of it, so they count once) and every global key in one softmax.
B. **global rows**: the G global queries of each batch element against all T keys in sequence order
   (G x T, linear in T), for every head at once. Their results replace A's for those rows.

The block masks are made at block level from the band's geometry (a (Q blocks, KV blocks) table,
1/128^2 of the scores), never from a T x T mask: ``create_block_mask`` would evaluate the mask_mod
densely over every (query, key) pair. Blocks that need no masking (inside the band, all keys valid,
not causal) are listed as full blocks, which the CUDA kernel runs without calling the mask_mod.

On CUDA the flex op is torch.compile'd once per process with dynamic shapes (see `_compiled_flex`).
On the CPU it runs eagerly: torch's unfused flex path, which materialises each call's scores, for
correctness checks and not for speed. The public ``flex_attention`` refuses gradients on the CPU, so
with autograd on there the flex higher-order op is called the way ``flex_attention`` calls it itself
(the op's own eager backward runs).

Attention dropout (dropout.py's hash mask, as every implementation) takes two flex calls per part:
flex's score_mod acts before the softmax, while dropout multiplies probabilities after it with the
undropped normaliser. A score_mod that sets dropped scores to -inf and adds log(1/(1-p)) to kept
ones gives ``out_d`` normalised over the kept keys with log-sum-exp ``lse_d``; a plain call gives
the undropped ``lse``; then ``out = out_d * exp(lse_d - lse)`` exactly, gradients through both.
"""
from __future__ import annotations

import math
import warnings

import torch

from .dropout import _fmix32, _i32, keep_scale, threshold

BLOCK = 128  # flex's block size: the granularity of its block-sparse skipping
_FLEX = None  # the compiled flex op of this process (CUDA), made on first use


def flex_attention_impl(
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
    """Longformer attention through flex_attention; exact semantics of `reference_attention`.

    q, k, v: (B, H, T, D); dilation: H ints; key_valid, is_global: bool (B, T) or None. Returns
    (B, H, T, D) in q's dtype; rows with nothing to attend are 0. Arguments are assumed checked by
    `sliding_window_attention`.
    """
    B, H, T, D = q.shape
    glob = GlobalSlots.make(is_global, key_valid, T)
    band_ok = key_valid  # keys the band may use: valid and not global (global keys count once)
    if is_global is not None:
        band_ok = ~is_global if band_ok is None else band_ok & ~is_global
    groups: dict[int, list[int]] = {}  # dilation -> heads
    for h, r in enumerate(dilation):
        groups.setdefault(min(r, max(T, 1)), []).append(h)  # r >= T: every row alone
    parts, order = [], []
    for r, heads in groups.items():
        mask = local_block_mask(B, len(heads), T, r, window, causal, band_ok, glob, q.device)
        qs, ks, vs = (_split(t[:, heads], r, mask.seq_lengths[0]) for t in (q, k, v))
        if glob is not None:
            ks = torch.cat([ks, _repeat_residues(glob.gather(k[:, heads]), r)], dim=2)
            vs = torch.cat([vs, _repeat_residues(glob.gather(v[:, heads]), r)], dim=2)
        drop = None if dropout is None else local_dropout_mod(dropout, B, H, heads, r, mask.seq_lengths[0], glob, q.device)
        parts.append(_merge(run_flex(qs, ks, vs, mask, scale, drop), len(heads), r, T))
        order += heads
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if order != sorted(order):
        out = out[:, torch.tensor(order, device=q.device).argsort()]
    if glob is None:
        return out
    drop = None if dropout is None else global_rows_dropout_mod(dropout, H, glob)
    rows = run_flex(glob.gather(q), k, v, global_rows_block_mask(glob, H, T, causal, key_valid), scale, drop)  # (B, H, G, D)
    back = rows.gather(2, glob.slot[:, None, :, None].expand(B, H, T, D))  # global row t -> its result
    return torch.where(is_global[:, None, :, None], back, out)


class GlobalSlots:
    """The global tokens of a batch, packed: element b's n_b global positions in slots 0 .. n_b - 1
    of G = max n_b slots (G rounded up to a multiple of 16 to limit distinct shapes under compile)."""

    def __init__(self, pos: torch.Tensor, present: torch.Tensor, key_ok: torch.Tensor, slot: torch.Tensor):
        self.pos = pos  # (B, G) int32 positions; 0 in empty slots
        self.present = present  # (B, G) bool: the slot holds a global token
        self.key_ok = key_ok  # (B, G) bool: ... that is also an unpadded key
        self.slot = slot  # (B, T) int64: slot of each global position (0 elsewhere)

    @staticmethod
    def make(is_global: torch.Tensor | None, key_valid: torch.Tensor | None, T: int) -> GlobalSlots | None:
        if is_global is None:
            return None
        B = is_global.shape[0]
        counts = is_global.sum(1)
        G = max(16, -(-int(counts.max()) // 16) * 16)
        rank = is_global.cumsum(1) - 1  # (B, T): slot of each global position
        present = torch.arange(G, device=is_global.device)[None, :] < counts[:, None]
        pos = torch.zeros(B, G, dtype=torch.int64, device=is_global.device)
        b_idx, t_idx = is_global.nonzero(as_tuple=True)
        pos[b_idx, rank[b_idx, t_idx]] = t_idx
        key_ok = present if key_valid is None else present & key_valid.gather(1, pos)
        slot = torch.where(is_global, rank, 0)
        return GlobalSlots(pos.to(torch.int32), present, key_ok, slot)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hx, T, D) -> (B, Hx, G, D): the rows of the global slots (empty slots: row 0)."""
        B, Hx, _, D = x.shape
        return x.gather(2, self.pos.long()[:, None, :, None].expand(B, Hx, self.pos.shape[1], D))


def _padded_length(n: int) -> int:
    """Sub-sequence slots: n rounded up to 16, or to the block size beyond one block."""
    return -(-n // 16) * 16 if n <= BLOCK else -(-n // BLOCK) * BLOCK


def _split(x: torch.Tensor, r: int, Tp: int) -> torch.Tensor:
    """(B, Hg, T, D) -> (B, Hg * r, Tp, D): position i of head g goes to flex head g * r + i % r, slot
    i // r; slots past the sequence are zero (their keys are masked, their rows dropped by `_merge`)."""
    B, Hg, T, D = x.shape
    x = torch.nn.functional.pad(x, (0, 0, 0, Tp * r - T))
    # contiguous whatever r and Hg (a reshape may return a strided view): compiled kernels guard on strides
    return x.view(B, Hg, Tp, r, D).transpose(2, 3).reshape(B, Hg * r, Tp, D).contiguous()


def _merge(y: torch.Tensor, Hg: int, r: int, T: int) -> torch.Tensor:
    """Inverse of `_split`: (B, Hg * r, Tp, D) -> (B, Hg, T, D)."""
    B, _, Tp, D = y.shape
    return y.view(B, Hg, r, Tp, D).transpose(2, 3).reshape(B, Hg, Tp * r, D)[:, :, :T]


def _repeat_residues(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, Hg, G, D) -> (B, Hg * r, G, D): the global keys of a head, once per residue (flex head)."""
    B, Hg, G, D = x.shape
    return x[:, :, None].expand(B, Hg, r, G, D).reshape(B, Hg * r, G, D)


def local_block_mask(B, Hg, T, r, window, causal, band_ok, glob, device):
    """The BlockMask of part A for a head group: B * Hg * r sequences (flex batch index
    n = (b * Hg + g) * r + m, see `run_flex`) of Tp query slots against Tp band slots + G global
    slots. Its mask_mod is the exact pattern; the block lists cover it."""
    from torch.nn.attention.flex_attention import BlockMask

    Tp = _padded_length(-(-T // r))
    G = 0 if glob is None else glob.pos.shape[1]
    KV = Tp + G
    # keys each flex head may use, per residue m: (B, r, KV)
    if band_ok is None:
        band_ok = torch.ones(B, T, dtype=torch.bool, device=device)
    ok = torch.nn.functional.pad(band_ok, (0, Tp * r - T)).view(B, Tp, r).transpose(1, 2)
    if glob is not None:
        ok = torch.cat([ok, glob.key_ok[:, None, :].expand(B, r, G)], dim=2)
    ok = ok.reshape(B * r, KV)  # row b * r + m
    right = 0 if causal else window
    # captured as tensors, not Python ints, so that the compiled kernel does not specialise on them
    w_t, right_t, tp_t, r_t, hr_t = (torch.tensor(x, device=device) for x in (window, right, Tp, r, Hg * r))
    gpos = None if glob is None else glob.pos

    def mask_mod(n, h, q, kv):
        b, m = n // hr_t, n % r_t  # batch element and residue of sequence n
        key_ok = ok[b * r_t + m, kv]
        band = (kv < tp_t) & (q - kv <= w_t) & (kv - q <= right_t)
        if gpos is None:
            return key_ok & band
        to_global = kv >= tp_t
        if causal:  # the global key's position against the query's, m + q r
            to_global = to_global & (gpos[b, torch.clamp(kv - tp_t, min=0)] <= m + q * r_t)
        return key_ok & (band | to_global)

    # block tables (nQ, nK) from the geometry, then (B, r, nQ, nK) with the keys' validity
    nQ, nK = -(-Tp // BLOCK), -(-KV // BLOCK)
    qlo = torch.arange(nQ, device=device)[:, None] * BLOCK
    qhi = torch.clamp(qlo + BLOCK, max=Tp) - 1
    klo = torch.arange(nK, device=device)[None, :] * BLOCK
    khi = torch.clamp(klo + BLOCK, max=KV) - 1
    in_band_area = klo < Tp
    any_band = in_band_area & (klo <= qhi + right) & (torch.clamp(khi, max=Tp - 1) >= qlo - window)
    full_band = (khi < Tp) & (qhi - klo <= window) & (khi - qlo <= right)
    any_global = khi >= Tp if G else torch.zeros_like(any_band)
    full_global = (klo >= Tp) & (not causal) if G else torch.zeros_like(any_band)
    ok_blocks = torch.nn.functional.pad(ok, (0, nK * BLOCK - KV)).view(B, r, nK, BLOCK).all(-1)  # (B, r, nK)
    any_blk = (any_band | any_global)[None, None].expand(B, r, nQ, nK)
    full = (full_band | full_global)[None, None] & ok_blocks[:, :, None, :]
    partial = any_blk & ~full
    heads = lambda t: t[:, None].expand(B, Hg, r, nQ, nK).reshape(B * Hg * r, 1, nQ, nK)  # noqa: E731
    (pn, pi), (fn, fi) = _ordered(heads(partial)), _ordered(heads(full))
    return BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(Tp, KV))


def global_rows_block_mask(glob: GlobalSlots, H: int, T: int, causal: bool, key_valid: torch.Tensor | None):
    """The BlockMask of part B: G global query slots against all T keys (every block listed), for
    B * H sequences (flex batch index n = b * H + h, see `run_flex`)."""
    from torch.nn.attention.flex_attention import BlockMask

    B, G = glob.pos.shape
    device = glob.pos.device
    key_ok = torch.ones(B, T, dtype=torch.bool, device=device) if key_valid is None else key_valid
    present, gpos = glob.present, glob.pos
    h_t = torch.tensor(H, device=device)

    def mask_mod(n, h, q, kv):
        b = n // h_t
        allowed = key_ok[b, kv] & present[b, q]
        return allowed & (kv <= gpos[b, q]) if causal else allowed

    nQ, nK = -(-G // BLOCK), -(-T // BLOCK)
    num, idx = _ordered(torch.ones(1, 1, nQ, nK, dtype=torch.bool, device=device))
    return BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(G, T))


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (..., nQ, nK) bool block table -> (count per query block, kv block indices listed first)."""
    dense = dense.to(torch.int32)
    return dense.sum(-1, dtype=torch.int32), torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)


def local_dropout_mod(dropout, B, H, heads, r, Tp, glob, device):
    """score_mod of part A applying dropout.py's mask: sequence n = (b * Hg + g) * r + m, query slot
    q is position m + q r of head heads[g], key slot kv is position m + kv r (band) or a global one."""
    seed, thr, log_scale = _drop_constants(dropout, device)
    heads_t = torch.tensor(heads, dtype=torch.int32, device=device)
    hr_t, r_t, tp_t, h_t = (torch.tensor(x, dtype=torch.int32, device=device) for x in (len(heads) * r, r, Tp, H))
    gpos = None if glob is None else glob.pos

    def score_mod(score, n, h, q, kv):
        n, q, kv = n.to(torch.int32), q.to(torch.int32), kv.to(torch.int32)
        b, m = n // hr_t, n % r_t
        head = heads_t[(n // r_t) % (hr_t // r_t)]
        kpos = m + kv * r_t
        if gpos is not None:
            kpos = torch.where(kv < tp_t, kpos, gpos[b, torch.clamp(kv - tp_t, min=0)])
        kept = _kept(seed, thr, b * h_t + head, m + q * r_t, kpos)
        return score + _bias(kept, log_scale)

    return score_mod


def global_rows_dropout_mod(dropout, H, glob):
    """score_mod of part B: sequence n = b * H + h, query slot q is global position pos[b, q]."""
    seed, thr, log_scale = _drop_constants(dropout, glob.pos.device)
    h_t = torch.tensor(H, dtype=torch.int32, device=glob.pos.device)
    gpos = glob.pos

    def score_mod(score, n, h, q, kv):
        n, q, kv = n.to(torch.int32), q.to(torch.int32), kv.to(torch.int32)
        kept = _kept(seed, thr, n, gpos[n // h_t, q], kv)
        return score + _bias(kept, log_scale)

    return score_mod


def _drop_constants(dropout, device):
    """(seed, threshold - 2^31, log(1/(1-p))) as 0-d tensors: graph inputs under compile, so that a new
    seed at every step does not recompile."""
    thr = threshold(dropout[0])
    return (torch.tensor(_i32(dropout[1]), dtype=torch.int32, device=device),
            torch.tensor(thr - (1 << 31), dtype=torch.int32, device=device),
            torch.tensor(math.log(keep_scale(thr)), dtype=torch.float32, device=device))


def _bias(kept, log_scale):
    # added to the score rather than selecting it, so that d(score_mod)/d(score) is 1 whatever the hash
    # (torch's eager flex backward traces the score_mod's gradient, and a where() on the hash there
    # came out wrong: dq/dk off while out and dv were exact)
    return torch.where(kept, log_scale, -float("inf"))


def _kept(seed, thr_signed, bh, qpos, kpos):
    """dropout.py's keep decision for (head b * H + h, query position, key position), int32 throughout."""
    head = _fmix32(seed ^ (bh * _i32(0x9E3779B1)))
    row = _fmix32(head ^ (qpos * _i32(0x85EBCA77)))
    return (_fmix32(row + kpos * _i32(0xC2B2AE3D)) ^ _i32(1 << 31)) >= thr_signed


def run_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, scale: float, drop=None) -> torch.Tensor:
    """flex_attention of (B, Hx, L, D) q against (B, Hx, S, D) k, v under block_mask, with the heads
    folded into the batch: flex sees B * Hx sequences of one head. flex keeps head counts static
    under compile (one kernel per count), batch sizes dynamic: folded, the head groups of every
    dilation share one compiled kernel. Compiled on CUDA, eager elsewhere (see module doc).
    drop: None, or a dropout score_mod (see the module doc: two calls then)."""
    B, Hx = q.shape[:2]
    q, k, v = (t.reshape(B * Hx, 1, *t.shape[2:]) for t in (q, k, v))
    if drop is None:
        out = _run_flex(q, k, v, block_mask, scale, None)[0]
    else:
        out_d, lse_d = _run_flex(q, k, v, block_mask, scale, drop)
        lse = _run_flex(q, k, v, block_mask, scale, None)[1]
        empty = lse == -float("inf")  # no key at all (then out_d is 0 too): keep exp() away from NaN
        lse_d = lse_d.masked_fill(empty, -float("inf"))
        out = out_d * torch.exp(lse_d - lse.masked_fill(empty, 0.0)).unsqueeze(-1).to(out_d.dtype)
    return out.view(B, Hx, *out.shape[2:])


def _run_flex(q, k, v, block_mask, scale, score_mod):
    """(out, natural-log lse) of one flex call on (N, 1, L, D) inputs."""
    from torch.nn.attention import flex_attention as fa

    aux = fa.AuxRequest(lse=True)
    if _use_compiled(q):
        extra = _captured(score_mod) if score_mod is not None else []
        _mark_dynamic(q, k, v, *block_mask.as_tuple()[:-1], *_captured(block_mask.mask_mod), *extra)
        out, got = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, return_aux=aux)
        return out, got.lse
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    with warnings.catch_warnings():
        # the eager path is chosen on purpose here: torch's "call it compiled" advice does not apply
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        if not needs_grad:  # (detached: CPU flex refuses inputs that require grad even under no_grad)
            out, got = fa.flex_attention(q.detach(), k.detach(), v.detach(), score_mod=score_mod,
                                         block_mask=block_mask, scale=scale, return_aux=aux)
            return out, got.lse
        return _eager_with_grad(fa, q, k, v, block_mask, scale, score_mod)


def _use_compiled(q: torch.Tensor) -> bool:
    # CUDA only: torch's CPU flex kernel (inductor C++) has no backward
    return q.is_cuda


def _eager_with_grad(fa, q, k, v, block_mask, scale, score_mod):
    """The flex op with autograd on the CPU, called as torch's flex_attention calls it (which itself
    refuses CPU gradients before it gets there)."""
    from torch._higher_order_ops.flex_attention import flex_attention as flex_op
    from torch._higher_order_ops.utils import setup_compilation_env

    def call(*args):
        return flex_op(*args)

    options = fa._apply_kernel_options(q, k, v, False, None, fa.AuxRequest(lse=True))
    with setup_compilation_env() as backend:
        out, lse, _ = torch.compile(call, backend=backend, fullgraph=True)(
            q, k, v, score_mod or _no_score_mod, block_mask.as_tuple(), scale, options
        )
    return out, lse * math.log(2.0)  # the op's statistics are base 2 (flex_attention converts them so)


def _captured(fn) -> list[torch.Tensor]:
    """The tensors a mask_mod closes over (the pattern's masks and constants)."""
    cells = fn.__closure__ or ()
    return [c.cell_contents for c in cells if isinstance(c.cell_contents, torch.Tensor)]


def _mark_dynamic(*tensors) -> None:
    """Let the compiled kernel treat every size of these tensors as symbolic, so that a new sequence
    length, batch or global count reuses it. Tensors a mask_mod closes over would otherwise be
    specialised on their first sizes (torch marks only the flex inputs dynamic). Head counts stay
    static (flex marks them so): one compilation per distinct (heads x residues) layout."""
    for t in tensors:
        if isinstance(t, torch.Tensor):
            for d in range(t.dim()):
                if t.shape[d] > 1:
                    torch._dynamo.maybe_mark_dynamic(t, d)


def _no_score_mod(score, b, h, q, kv):
    return score


def _compiled_flex():
    """flex_attention compiled once per process, with dynamic shapes so that a new sequence length
    (or global count) reuses the kernel instead of recompiling it; the mask tensors and the window
    are graph inputs (see `local_block_mask`)."""
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=True)
    return _FLEX
