"""Measurement subprocess of `longformer bench attention`: builds one implementation, measures it.

See the docstring of `longformer.bench.attention` for what each implementation runs.
"""
from __future__ import annotations

import ctypes
import gc
import re
import resource
import statistics
import time
from collections.abc import Callable

import torch

DEVICE = torch.device("cpu")  # the device of this measurement subprocess (set by `measure`)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _clock() -> Callable[[], float]:
    """With one torch thread, the thread's CPU time (it stops while other jobs hold the core: what
    `--threads 1` is for on a shared machine); else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def measure_interleaved(specs: list[dict], repeats: int) -> list[dict]:
    """Time several specs in one process, round-robin (one call of each per round), median per spec:
    slow phases of a shared machine then hit every spec alike, so their ratios are stable."""
    fns, errors = [], []
    for spec in specs:
        torch.manual_seed(0)
        fn, leaves, note, _ = _build(spec)
        fns.append((fn, leaves))
        errors.append(_error_vs_fp32(spec, fn, leaves))
    fwd = [[] for _ in specs]
    fb = [[] for _ in specs]
    for fn, leaves in fns:  # warm-up
        with torch.no_grad():
            fn()
        _fwd_bwd(fn, leaves)
    clock = _clock()
    for _ in range(repeats):
        for i, (fn, leaves) in enumerate(fns):
            with torch.no_grad():
                _sync()
                t0 = clock()
                fn()
                _sync()
                fwd[i].append(clock() - t0)
            t0 = clock()
            _fwd_bwd(fn, leaves)
            _sync()
            fb[i].append(clock() - t0)
    return [
        {"fwd_ms": 1e3 * statistics.median(a), "fb_ms": 1e3 * statistics.median(b), "rel_err": e}
        for a, b, e in zip(fwd, fb, errors)
    ]


def _error_vs_fp32(spec: dict, fn: Callable, leaves: list[torch.Tensor]) -> float | None:
    """max |out - out32| / max |out32|, out32 from the same implementation in fp32 on the same
    (low-precision) inputs; None for fp32 specs."""
    if spec["dtype"] == "float32":
        return None
    torch.manual_seed(0)
    fn32, leaves32, _, _ = _build(dict(spec, dtype="float32"))
    with torch.no_grad():
        for mine, theirs in zip(leaves32, leaves):
            mine.copy_(theirs)
        want, got = fn32(), fn().float()
    return ((got - want).abs().max() / want.abs().max()).item()


def measure(spec: dict) -> dict:
    global DEVICE
    DEVICE = torch.device(spec.get("device", "cpu"))
    if spec["impl"] == "interleaved":
        return {"results": measure_interleaved(spec["specs"], spec["repeats"])}
    if spec["impl"] == "gemm":
        dtype = getattr(torch, spec["dtype"])
        mm = _gemm_rate(dtype)  # on DEVICE
        onednn = _onednn_rate(dtype) if DEVICE.type == "cpu" else None
        return dict(gflops=max(mm, onednn or 0.0), mm_gflops=mm, onednn_gflops=onednn)
    if spec["impl"] == "build":
        return _kernel_build()
    if spec["impl"] == "paired":
        return _paired_with_gemm(spec["spec"], spec["repeats"])
    torch.manual_seed(0)
    fn, leaves, note, compile_fn = _build(spec)
    if fn is None:
        return dict(note=note)
    result: dict = dict(note=note)
    if compile_fn:  # compile before measuring memory: its one-time cost is reported apart
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        _sync()
        result["compile_s"] = time.perf_counter() - t0
        try:  # the backward graph compiles on the first backward: reported apart too
            t0 = time.perf_counter()
            _fwd_bwd(fn, leaves)
            _sync()
            result["compile_bwd_s"] = time.perf_counter() - t0
        except Exception:
            pass  # reported below as a missing backward
    # forward first: a failed backward attempt can leave a compiled peer running eagerly afterwards
    with torch.no_grad():
        result["fwd_mb"] = _peak_mb(fn)
        result["fwd_ms"] = _time_ms(fn, spec["repeats"])
    try:
        result["fb_mb"] = _peak_mb(lambda: _fwd_bwd(fn, leaves))
        result["fb_ms"] = _time_ms(lambda: _fwd_bwd(fn, leaves), spec["repeats"])
    except Exception as err:  # e.g. a peer without a backward on this device
        backward_error = f"no backward: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        result["note"] = "; ".join(x for x in (note, backward_error) if x)
    if DEVICE.type == "cuda":
        result["memory_method"] = "torch.cuda.max_memory_allocated"
    else:
        result["memory_method"] = "VmHWM" if _can_reset_hwm() else "ru_maxrss"
    return result


def _fwd_bwd(fn: Callable, leaves: list[torch.Tensor]) -> None:
    out = fn()
    out.backward(torch.ones_like(out))
    for t in leaves:
        t.grad = None


def _time_ms(fn: Callable, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# ----------------------------------------------------------------------------- memory


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:  # hand freed heap pages back, so that the baseline RSS holds live memory only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _peak_mb(fn: Callable) -> float:
    _trim()
    if DEVICE.type == "cuda":  # GPU memory: the allocator's peak over what was allocated before
        _sync()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
        fn()
        _sync()
        return (torch.cuda.max_memory_allocated(DEVICE) - base) / 2**20
    if _can_reset_hwm():
        base = _rss_kb("VmRSS")
        _can_reset_hwm()
        fn()
        return (_rss_kb("VmHWM") - base) / 1024
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def _kernel_build() -> dict:
    """The compiled kernel's one-time cost: a fresh build into an empty cache, then a load from it."""
    import os
    import tempfile

    from longformer.attention import _native

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LONGFORMER_CACHE"] = tmp
        st = _native.status()
        if not st.available:
            return dict(error=f"not available: {st.reason}")
        simd = _native.load().lf_simd_width()
        _native.forget()  # time loading the cached file
        t0 = time.perf_counter()
        again = _native.status()
        load_ms = 1e3 * (time.perf_counter() - t0)
        return dict(build_s=st.build_s, load_ms=load_ms, simd=simd, reused=again.build_s is None)


def _gemm_rate(dtype: torch.dtype, n: int = 2048) -> float:
    """Dense GEMM rate at size n, shrunk (down to 256) while one call takes over 0.5 s: a dtype without
    hardware support (bf16 on an AVX2 CPU) runs at a few GFLOP/s and must not stall the bench."""
    if DEVICE.type == "cuda":
        n = 8192
    while True:
        a, b = (torch.randn(n, n, dtype=dtype, device=DEVICE) for _ in range(2))
        _sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync()
        if time.perf_counter() - t0 < 0.5 or n <= 256:
            break
        n //= 2
    ms = _time_ms(lambda: torch.mm(a, b), 5)
    return 2 * n**3 / (ms / 1e3) / 1e9


def _paired_with_gemm(spec: dict, repeats: int) -> dict:
    """The forward of one implementation and the dense GEMM, called alternately in one process.

    On a machine shared with other jobs the GEMM probes at the start and end of the run and the
    subprocess of an implementation see different phases of the load; a pair of calls made right
    after each other sees nearly the same one. Returns the median over 3 * repeats pairs of the
    forward's useful rate (4*T*(2w+1)*H*D*B per call) divided by the GEMM's rate.
    """
    torch.manual_seed(0)
    fn, _, _, _ = _build(spec)
    if fn is None:
        return dict(error="not available")
    n = 2048
    dtype = getattr(torch, spec["dtype"])
    if _onednn_rate(dtype) is not None:
        a, b = torch.randn(n, n).to_mkldnn(), torch.randn(n, n).to_mkldnn()
        gemm = lambda: torch._C._nn.mkldnn_linear(a, b, None)  # noqa: E731
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        gemm = lambda: torch.mm(a, b)  # noqa: E731
    T, w = spec["T"], spec["window"]
    flop = 4 * T * (2 * w + 1) * spec["heads"] * spec["head_dim"] * spec["batch"]
    cpu_time = torch.get_num_threads() == 1
    clock = _clock()
    ratios, fwd_ms = [], []
    with torch.no_grad():
        fn(), gemm()
        for _ in range(3 * repeats):
            t0 = clock()
            gemm()
            t1 = clock()
            fn()
            t2 = clock()
            ratios.append((flop / (t2 - t1)) / (2 * n**3 / (t1 - t0)))
            fwd_ms.append(1e3 * (t2 - t1))
    return dict(ratio=statistics.median(ratios), fwd_ms=statistics.median(fwd_ms), pairs=len(ratios), cpu_time=cpu_time)


def _onednn_rate(dtype: torch.dtype, n: int = 2048) -> float | None:
    """Dense GEMM rate of oneDNN's matmul (a linear layer on mkldnn tensors), or None without it.

    torch.mm goes to MKL, which on AMD CPUs runs far below the hardware (measured on an AMD EPYC with
    AVX-512: 90-180 GFLOP/s fp32 against 390-400 through oneDNN, whose fp32 rate is ~87% of the FMA
    peak there): the kernel is compared with the faster of the two.
    """
    if not torch.backends.mkldnn.is_available() or dtype != torch.float32:
        return None
    a, b = torch.randn(n, n).to_mkldnn(), torch.randn(n, n).to_mkldnn()
    ms = _time_ms(lambda: torch._C._nn.mkldnn_linear(a, b, None), 5)
    return 2 * n**3 / (ms / 1e3) / 1e9


# ----------------------------------------------------------------------------- implementations


def _build(spec: dict):
    """(fn, leaves, note, compiles) for one implementation; fn None when it cannot run."""
    B, H, T, D = spec["batch"], spec["heads"], spec["T"], spec["head_dim"]
    w, causal, n_glob = spec["window"], spec["causal"], min(spec["globals"], spec["T"])
    dtype = getattr(torch, spec["dtype"])
    dilation = spec["dilation"] * H if len(spec["dilation"]) == 1 else spec["dilation"]
    dilated = max(dilation) > 1
    impl = spec["impl"]
    q, k, v = (torch.randn(B, H, T, D, dtype=dtype, device=DEVICE, requires_grad=True) for _ in range(3))
    if impl == "sdpa-dense":
        fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return fn, [q, k, v], "full T x T attention", False
    if impl == "transformers":
        return _transformers(B, H, T, D, w, n_glob, dtype, causal, dilated)
    if impl == "local-attention":
        return _local_attention(q, k, v, w, causal, n_glob, dilated)
    if impl == "flash-attn":
        return _flash_attn(B, H, T, D, w, n_glob, dtype, causal, dilated)
    if impl == "compiled" and DEVICE.type != "cpu":
        return None, [], "CPU kernel", False
    from longformer.attention import sliding_window_attention

    glob = torch.zeros(B, T, dtype=torch.bool, device=DEVICE)
    glob[:, :n_glob] = True
    fn = lambda: sliding_window_attention(
        q, k, v, w, dilation=dilation, causal=causal, global_attention_mask=glob, impl=impl
    )
    if impl == "flex":
        if DEVICE.type == "cuda":
            return fn, [q, k, v], "torch.compile'd flex_attention (dynamic shapes)", True
        if B * H * T * T > 2**28:  # eager flex holds several (B, H, T, T) fp32 tensors at once
            return None, [], "eager CPU flex skipped above 2^28 scores (it materialises T x T)", False
        return fn, [q, k, v], "eager flex: torch's unfused path (T x T scores per call)", False
    return fn, [q, k, v], "", False


def _transformers(B, H, T, D, w, n_glob, dtype, causal, dilated):
    try:
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention
    except ImportError:
        return None, [], "transformers not installed", False
    if causal or dilated:
        return None, [], "no causal/dilated mode", False
    if w == 0 or T % (2 * w):
        return None, [], f"needs T a multiple of 2w={2 * w}", False
    config = LongformerConfig(
        hidden_size=H * D, num_attention_heads=H, attention_window=[2 * w], attention_probs_dropout_prob=0.0
    )
    attn = LongformerSelfAttention(config, layer_id=0).to(dtype=dtype, device=DEVICE)
    for name in ("query", "key", "value", "query_global", "key_global", "value_global"):
        setattr(attn, name, torch.nn.Identity())  # time the attention core only, not projections
    x = torch.randn(B, T, H * D, dtype=dtype, device=DEVICE, requires_grad=True)
    mask = torch.zeros(B, T, dtype=dtype, device=DEVICE)
    mask[:, :n_glob] = 10000.0  # transformers' layer-level convention: +10000 = global, 0 = local
    is_masked, is_glob = mask < 0, mask > 0
    any_glob = bool(is_glob.any())

    def fn():
        # x * 1: its forward divides the (identity-projected) query in place
        return attn(x * 1.0, attention_mask=mask, is_index_masked=is_masked, is_index_global_attn=is_glob,
                    is_global_attn=any_glob)[0]

    return fn, [x], "attention core (projections = Identity)", False


def _local_attention(q, k, v, w, causal, n_glob, dilated):
    try:
        from local_attention import LocalAttention
    except ImportError:
        return None, [], "local-attention not installed", False
    if dilated or w == 0:
        return None, [], "no dilation / w=0", False
    attn = LocalAttention(
        window_size=w, causal=causal, look_backward=1, look_forward=0 if causal else 1,
        exact_windowsize=True, autopad=True,
    )
    note = "no global tokens" if n_glob else ""
    return (lambda: attn(q, k, v)), [q, k, v], note, False


def _flash_attn(B, H, T, D, w, n_glob, dtype, causal, dilated):
    """flash-attn's sliding window: ``flash_attn_func(window_size=(w, w))`` (left, right; right 0 when
    causal) on (B, T, H, D) inputs. CUDA and fp16/bf16 only; no global tokens, no dilation."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None, [], "flash_attn not installed", False
    if DEVICE.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return None, [], "needs CUDA and fp16/bf16", False
    if dilated:
        return None, [], "no dilation", False
    q, k, v = (torch.randn(B, T, H, D, dtype=dtype, device=DEVICE, requires_grad=True) for _ in range(3))
    fn = lambda: flash_attn_func(q, k, v, causal=causal, window_size=(w, 0 if causal else w))
    return fn, [q, k, v], "window only (no global tokens)" if n_glob else "", False
