"""impl="flex" against the dense reference over the shared grid of test_blocked.py (outputs and
gradients of q, k, v), on the CPU (eager flex) and on CUDA when present (compiled flex); plus its
block masks, which the eager path never reads (it applies the mask_mod to every pair), checked to
cover the pattern and to be sparse; dropout; and its compiled path's recompilations."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch.nn.attention.flex_attention import BlockMask, create_mask

import test_blocked as shared
from attn_helpers import grads
from longformer import sliding_window_attention
from longformer.attention import flex
from longformer.attention.reference import allowed_pairs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
on_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _split_grid():
    """test_blocked.py's grid, cut in two: eager flex on the CPU costs ~1 s a case (torch's unfused
    path vmaps the mask over every pair and its backward; 2-15 s on this loaded machine), so the
    default run takes every fifth fp32 case of the small lengths (the product is ordered so that
    every value of every axis still occurs) and the low-precision cases up to T=97; the rest,
    T=1025 included, is marked slow (test_several_blocks covers lengths of several flex blocks)."""
    default, slow = [], []
    small_fp32 = 0
    for case in shared.grid():
        T, dtype = case[0], case[6]
        if T <= 97 and dtype == torch.float32:
            keep = small_fp32 % 5 == 0
            small_fp32 += 1
        else:
            keep = T <= 97
        (default if keep else slow).append(case)
    return default, [pytest.param(*c, marks=pytest.mark.slow) for c in slow]


DEFAULT_GRID, SLOW_GRID = _split_grid()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T,window,dilation,causal,globals_,padding,dtype", DEFAULT_GRID + SLOW_GRID)
def test_matches_reference(device, T, window, dilation, causal, globals_, padding, dtype):
    B = 3 if (padding or globals_ == "many") else 1
    D = 8 if T >= 1025 else 16
    shared.check_against_reference(
        "flex", dtype, B, len(dilation), T, D, window, dilation, causal, globals_, padding, device=device
    )


def test_default_grid_covers_every_axis():
    small = [c for c in shared.grid() if c[0] <= 97]
    for axis in (0, 2, 3, 4, 5, 6):  # T, dilation, causal, globals, padding, dtype
        assert {c[axis] for c in DEFAULT_GRID} == {c[axis] for c in small}, f"axis {axis}"
    assert {c[1] for c in DEFAULT_GRID if c[0] == 7} == {c[1] for c in small if c[0] == 7}  # every window kind


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
def test_several_blocks(device, causal):
    """Three 128-row flex blocks at r=1 (two at r=2), a window wider than a block, every feature."""
    shared.check_against_reference("flex", torch.float32, 3, 3, 300, 8, 130, (1, 2, 1), causal, "many", True, device=device)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,window", [(2049, 256), (1025, 1025)])
def test_matches_reference_large(device, T, window, causal, dtype):
    shared.check_against_reference(
        "flex", dtype, 2, 4, T, 32, window, (1, 2, 1, 4), causal, "many", True, device=device
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [300, 700])
def test_blocked_on_the_same_device(device, T):
    """The default GPU implementation next to flex, on the device flex runs on there."""
    shared.check_against_reference("blocked", torch.float32, 2, 3, T, 16, 37, (1, 3, 2), True, "many", True, device=device)


@settings(max_examples=10, deadline=None)
@given(**shared.RANDOM_PATTERN)
def test_random_patterns(B, H, T, D, window, max_r, causal, p_global, p_pad, seed):
    """The random patterns of test_blocked.py (B, H, T, D, window, per-head dilation, causal, global
    and padding densities) with impl="flex": 10 examples here, 25 more under slow."""
    shared.check_random_pattern("flex", B, H, T, D, window, max_r, causal, p_global, p_pad, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(**shared.RANDOM_PATTERN)
def test_random_patterns_more(B, H, T, D, window, max_r, causal, p_global, p_pad, seed):
    shared.check_random_pattern("flex", B, H, T, D, window, max_r, causal, p_global, p_pad, seed)


def test_no_grad_path_matches_grad_path():
    """Without autograd the public flex_attention runs; with it the flex op is called directly."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 150, 8, generator=g) for _ in range(3))
    is_global = torch.zeros(2, 150, dtype=torch.bool)
    is_global[0, [0, 149]] = True
    is_global[1, 70] = True
    kw = dict(dilation=(1, 2, 1), causal=True, global_attention_mask=is_global, impl="flex")
    with torch.no_grad():
        plain = sliding_window_attention(q, k, v, 6, **kw)
    with_grad = sliding_window_attention(*(t.clone().requires_grad_(True) for t in (q, k, v)), 6, **kw)
    torch.testing.assert_close(plain, with_grad.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_matches_the_reference_mask(device):
    """Dropout (two flex calls: out over the kept keys, rescaled by the undropped log-sum-exp) with a
    high rate, so that some rows lose every key; test_dropout.py runs the other patterns."""
    g = torch.Generator().manual_seed(11)
    B, H, T, D = 2, 2, 150, 8
    q, k, v, dout = (torch.randn(B, H, T, D, generator=g).to(device) for _ in range(4))
    is_global = torch.zeros(B, T, dtype=torch.bool, device=device)
    is_global[0, [3, 140]] = True
    kw = dict(window=2, dilation=(1, 2), causal=True, global_attention_mask=is_global, dropout_p=0.9, dropout_seed=5)
    truth = grads("reference", q.double(), k.double(), v.double(), dout.double(), **kw)
    for name, t, x in zip(("out", "dq", "dk", "dv"), truth, grads("flex", q, k, v, dout, **kw)):
        torch.testing.assert_close(x.double(), t, atol=3e-5, rtol=3e-5, msg=name)


def test_auto_never_picks_flex():
    """flex was never measured faster than blocked on a GPU (docs/attention.md): auto does not use it."""
    from longformer.attention.api import _choose_impl

    for T in (8, 300, 5000):
        assert _choose_impl(torch.empty(1, 2, T, 8)) != "flex"


def _mask_cases():
    """(B, T, window, r, causal, is_global, key_valid): several query blocks, windows below, at and
    above the block size, globals and padding, so partial, full and global blocks all occur."""
    g = torch.Generator().manual_seed(7)
    cases = []
    for T, w, r, causal in [(700, 5, 1, False), (700, 130, 1, True), (900, 40, 3, False), (600, 300, 2, True),
                            (400, 0, 1, False), (1100, 127, 1, False),
                            (700, 126, 1, False), (900, 254, 2, False)]:  # a block edge 1 past the window
        is_global = torch.zeros(2, T, dtype=torch.bool)
        is_global[0, [0, T // 2]] = True
        is_global[1, torch.randperm(T, generator=g)[:40]] = True
        key_valid = torch.ones(2, T, dtype=torch.bool)
        key_valid[1, -T // 4:] = False  # a padded tail: its blocks are never full
        cases.append((T, w, r, causal, is_global, key_valid))
        cases.append((T, w, r, causal, None, None))
    return cases


@pytest.mark.parametrize("T,window,r,causal,is_global,key_valid", _mask_cases())
def test_local_block_mask_covers_the_pattern_and_is_sparse(T, window, r, causal, is_global, key_valid):
    """Every pair the mask_mod allows lies in a listed block; every block listed as full is allowed
    everywhere (the CUDA kernel skips the mask_mod there); the mask_mod is the spec; and each query
    block lists no more key blocks than the band and the global slots can touch."""
    B, Hg = 2, 2
    glob = flex.GlobalSlots.make(is_global, key_valid, T)
    band_ok = key_valid
    if is_global is not None:
        band_ok = ~is_global if band_ok is None else band_ok & ~is_global
    bm = flex.local_block_mask(B, Hg, T, r, window, causal, band_ok, glob, torch.device("cpu"))
    Tp, KV = bm.seq_lengths
    dense = create_mask(bm.mask_mod, B * Hg * r, 1, Tp, KV, "cpu").view(B, Hg * r, Tp, KV)
    nQ, nK = -(-Tp // flex.BLOCK), -(-KV // flex.BLOCK)
    pad = (0, nK * flex.BLOCK - KV, 0, nQ * flex.BLOCK - Tp)
    blocks = torch.nn.functional.pad(dense, pad).view(B, Hg * r, nQ, flex.BLOCK, nK, flex.BLOCK)
    listed = bm.to_dense().bool().view(B, Hg * r, nQ, nK)
    assert not (blocks.any(5).any(3) & ~listed).any(), "an allowed pair lies in a block that is not listed"
    full = BlockMask.from_kv_blocks(bm.full_kv_num_blocks, bm.full_kv_indices, BLOCK_SIZE=flex.BLOCK,
                                    seq_lengths=(Tp, KV)).to_dense().bool().view(B, Hg * r, nQ, nK)
    padded_ok = torch.nn.functional.pad(torch.ones_like(dense), pad).view_as(blocks)
    all_allowed = (blocks | ~padded_ok).all(5).all(3)
    assert not (full & ~all_allowed).any(), "a block listed as full has a masked pair"
    if key_valid is None and is_global is None and window >= 2 * flex.BLOCK and Tp > 2 * flex.BLOCK:
        assert full.any(), "no full block at all: the CUDA kernel would mask every block"
    band_blocks = -(-(flex.BLOCK + 2 * window) // flex.BLOCK) + 1
    glob_blocks = 0 if glob is None else -(-glob.pos.shape[1] // flex.BLOCK) + 1
    assert int(listed.sum(-1).max()) <= band_blocks + glob_blocks
    # the mask_mod in split space against the spec in sequence space (local rows and all keys)
    # the mask_mod in split space against the spec in sequence space: flex head g r + m, slot s is
    # position m + s r; its band slots must allow exactly the spec's pairs within residue m (global
    # keys excluded: they come as global slots), for every local row
    spec = allowed_pairs(T, window, (r,) * Hg, causal, key_valid, is_global, torch.device("cpu")).expand(B, Hg, T, T)
    for b in range(B):
        for m in range(r):
            pos = torch.arange(m, T, r)
            local = pos if is_global is None else pos[~is_global[b, pos]]
            rows = torch.searchsorted(pos, local)  # slots of the local rows
            want = spec[b][:, local][:, :, pos]
            if is_global is not None:
                want = want & ~is_global[b, pos]
                glob_pos, slots = glob.pos[b].long(), glob.key_ok[b]
                got_glob = dense[b, m::r, :, Tp:][:, rows][:, :, slots]
                assert torch.equal(got_glob, spec[b][:, local][:, :, glob_pos[slots]]), (b, m, "global keys")
                assert not dense[b, m::r, :, Tp:][:, rows][:, :, ~slots].any(), (b, m, "empty global slots")
            assert torch.equal(dense[b, m::r, :, :Tp][:, rows][:, :, : pos.numel()], want), (b, m)
            assert not dense[b, m::r, :, pos.numel():Tp].any(), (b, m, "slots past the sequence")


@pytest.mark.parametrize("T,G,causal", [(300, 3, False), (700, 40, True)])
def test_global_rows_block_mask(T, G, causal):
    g = torch.Generator().manual_seed(T)
    is_global = torch.zeros(2, T, dtype=torch.bool)
    is_global[0, torch.randperm(T, generator=g)[:G]] = True
    is_global[1, 5] = True
    key_valid = torch.rand(2, T, generator=g) > 0.2
    glob = flex.GlobalSlots.make(is_global, key_valid, T)
    H = 2
    bm = flex.global_rows_block_mask(glob, H, T, causal, key_valid)
    dense = create_mask(bm.mask_mod, 2 * H, 1, *bm.seq_lengths, "cpu").view(2, H, -1, T)[:, 1]  # (B, G slots, T)
    spec = allowed_pairs(T, 0, (1,), causal, key_valid, is_global, torch.device("cpu"))[:, 0]
    for b in range(2):
        rows = is_global[b].nonzero().squeeze(1)
        assert torch.equal(dense[b, : rows.numel()], spec[b, rows])
        assert not dense[b, rows.numel():].any()


def test_compiled_path_does_not_recompile_for_new_lengths(monkeypatch):
    """The compiled route (what CUDA runs) with a backend that counts compilations, on the CPU: new
    sequence lengths, windows and global counts reuse the graphs (heads are folded into the batch,
    so the head groups of every dilation share them), and the results match the reference."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled = []

    def counting_backend(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    monkeypatch.setattr(flex, "_FLEX", torch.compile(flex_attention, dynamic=True, backend=counting_backend))
    monkeypatch.setattr(flex, "_use_compiled", lambda q: True)
    g = torch.Generator().manual_seed(0)
    counts = []
    for T, w, n_global in [(300, 5, 1), (333, 7, 3), (517, 40, 20), (1200, 129, 5)]:
        q, k, v = (torch.randn(2, 3, T, 16, generator=g) for _ in range(3))
        is_global = torch.zeros(2, T, dtype=torch.bool)
        is_global[0, torch.randperm(T, generator=g)[:n_global]] = True
        is_global[1, 3] = True
        key_valid = torch.rand(2, T, generator=g) > 0.1
        kw = dict(dilation=(1, 2, 1), causal=True, attention_mask=key_valid, global_attention_mask=is_global)
        with torch.no_grad():
            out = sliding_window_attention(q, k, v, w, impl="flex", **kw)
        torch.testing.assert_close(out, sliding_window_attention(q, k, v, w, impl="reference", **kw), atol=2e-5, rtol=2e-5)
        counts.append(len(compiled))
    assert counts[0] >= 1 and counts[-1] == counts[0], f"graphs compiled after each call: {counts}"
