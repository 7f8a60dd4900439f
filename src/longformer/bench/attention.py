"""`longformer bench attention`: time and peak memory of Longformer attention against its CPU peers.

Every (implementation, T) pair is measured in a fresh subprocess, so that one run's allocator state,
thread pools or compiled code cannot leak into another's numbers. In that subprocess:

- peak memory is the rise of the resident set size (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` right before the call, after ``malloc_trim``) over the RSS just before
  the call: one forward under ``no_grad``, then one forward+backward (which includes the gradients
  of the inputs). Inputs are excluded. Implementations that compile are warmed up first, and their
  one-time compile cost is reported separately. Without ``/proc`` (not Linux) the fallback is
  ``ru_maxrss`` of a fresh process, which then includes the imports.
- time is the median of ``--repeats`` calls after one warm-up call; forward runs under ``no_grad``.

What is timed for each implementation (q, k, v: (B, H, T, D) random, scale D^-0.5):

- ``blocked`` (and any other fast ``impl`` of ``sliding_window_attention``; ``reference`` only when
  asked with ``--impls``): the library call with ``--globals`` leading global tokens, the
  ``--dilation`` per head and ``--causal``.
- ``sdpa-dense``: ``torch.nn.functional.scaled_dot_product_attention`` over the full T x T: the cost of
  plain full attention that users compare with.
- ``transformers``: ``LongformerSelfAttention.forward`` of transformers' modeling_longformer with its six
  projections (query/key/value and the global ones) set to ``nn.Identity``, so what runs is exactly its
  attention core: the sliding-chunks scores, the padding mask, the global-key columns, the softmax, the
  sliding-chunks output and the global rows recomputed over all keys. Its input is one (B, T, H*D)
  tensor used as q, k and v (the cost does not depend on the values). Needs T a multiple of 2w; it has
  no dilation or causal mode (skipped then).
- ``local-attention``: lucidrains' ``LocalAttention(window_size=w, exact_windowsize=True,
  look_backward=1, look_forward=1 (0 if causal), autopad=True)``: buckets of w, each query scores 3w
  keys and masks them to the exact +-w window. No global tokens, no dilation.
- ``flash-attn``: ``flash_attn_func(q, k, v, causal, window_size=(w, w))`` (right 0 when causal), the
  sliding window of flash-attention, when ``flash_attn`` is importable: CUDA, fp16/bf16, no global
  tokens, no dilation.
- ``flex`` is a library implementation (``impl="flex"``, attention/flex.py): on CUDA it runs
  ``torch.compile``'d flex_attention and its one-time compile cost (forward, then backward) is
  reported apart from the timings; on the CPU it is torch's eager flex (T x T scores), a correctness
  path whose numbers only say that.

``--device cuda`` runs every row on the GPU (default lengths 4096 16384 65536): time with
``torch.cuda.synchronize`` around each call, peak memory as ``torch.cuda.max_memory_allocated`` over
what was allocated before the call (inputs excluded); the CPU-only ``compiled`` kernel is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .._files import atomic_write_text
from ..errors import LongformerError

PEERS = ("sdpa-dense", "transformers", "local-attention", "flash-attn")
WORKER = "from longformer.bench.attention import _worker; _worker()"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="sequence lengths T (default 1024 4096 16384, with --device cuda 4096 16384 65536; "
                        "4096 with --variants)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every row runs (default cpu)")
    parser.add_argument("--window", type=int, default=256, help="one-sided window w (default 256)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--globals", type=int, default=1, help="number of leading global tokens (default 1)")
    parser.add_argument("--dilation", default="1", help="an int, or H comma-separated ints (per head)")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--impls", nargs="+", default=None, help="subset of implementations (default: all available)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="T in {512, 1024, 2048}, 1 repeat")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON ('-' for stdout)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw time and memory against T (matplotlib)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement subprocess")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every measurement (default: torch's). With 1, the forward/GEMM "
                        "pairs are timed in the thread's CPU time, which other jobs' use of the core does not inflate")
    parser.add_argument(
        "--variants", action="store_true",
        help="instead of the peers: the cost of dilation, causal mode and 1..64 global tokens against the "
        "plain window, for our implementations, at each --lengths (default 4096)",
    )


class BenchArgumentError(LongformerError, ValueError):
    """A bad `bench attention` option: the CLI prints it as one line (exit 2)."""


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from longformer.attention import IMPLS

    if args.quick:
        args.lengths, args.repeats = [512, 1024, 2048], 1
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BenchArgumentError("--device cuda: torch.cuda.is_available() is False here; run on a machine with a GPU or use --device cpu")
    if args.lengths is None:
        args.lengths = [4096] if args.variants else [4096, 16384, 65536] if args.device == "cuda" else [1024, 4096, 16384]
    parts = str(args.dilation).split(",")
    dilation = [int(x) for x in parts] if all(x.strip().isdigit() for x in parts) else []
    if len(dilation) not in (1, args.heads) or min(dilation) < 1:
        raise BenchArgumentError(f"--dilation must be one int >= 1 or {args.heads} comma-separated ints, got {args.dilation!r}")
    if min(args.lengths) < 1 or args.window < 0 or args.globals < 0 or args.repeats < 1:
        raise BenchArgumentError("--lengths and --repeats must be >= 1, --window and --globals >= 0")
    ours = [i for i in IMPLS if i not in ("auto", "reference")]
    known = ours + ["reference", *PEERS]
    cpu_only = ("compiled",) if args.device == "cuda" else ("flash-attn",)
    impls = args.impls or [i for i in ours + list(PEERS) if i not in cpu_only]
    for name in impls:
        if name not in known:
            raise BenchArgumentError(f"--impls: unknown implementation {name!r}, expected some of {known}")
    base = dict(
        window=args.window, heads=args.heads, head_dim=args.head_dim, batch=args.batch, dtype=args.dtype,
        globals=args.globals, dilation=dilation, causal=args.causal, repeats=args.repeats, device=args.device,
        threads=args.threads,
    )
    if args.variants:
        return _run_variants(args, base, [i for i in impls if i in ours] or ours)
    gemm = [_in_subprocess(dict(base, impl="gemm", T=0), args.timeout)]
    results = []
    jobs = [(impl, T) for T in sorted(args.lengths) for impl in impls]
    for impl, T in tqdm(jobs, desc="bench attention", unit="run", file=sys.stderr):
        results.append(dict(impl=impl, T=T, **_in_subprocess(dict(base, impl=impl, T=T), args.timeout)))
    gemm.append(_in_subprocess(dict(base, impl="gemm", T=0), args.timeout))
    report = dict(config=base, gemm_gflops=[g.get("gflops") for g in gemm], results=results,
                  gemm_detail=[{k: g.get(k) for k in ("mm_gflops", "onednn_gflops")} for g in gemm])
    # the growth of our kernels' time from T/4 to T again, timed round-robin in one process: the
    # sequential subprocesses above see the machine in different phases (seen here: x4.2 to x5.6
    # between runs for the same code, against x4.1-4.2 interleaved)
    big = max(args.lengths)
    if big // 4 in args.lengths:
        for impl in [i for i in impls if i in ours]:
            got = _in_subprocess(
                dict(base, impl="interleaved", T=big, specs=[dict(base, impl=impl, T=T) for T in (big // 4, big)]),
                args.timeout,
            )
            report.setdefault("growth_interleaved", {})[impl] = got.get("results") or got
    # our CPU kernels only: eager flex on the CPU is a correctness path, not worth a paired run
    for impl in [i for i in impls if i in ("compiled", "blocked") and args.device == "cpu"]:
        for T in sorted(args.lengths):
            got = _in_subprocess(dict(base, impl="paired", T=T, spec=dict(base, impl=impl, T=T)), args.timeout)
            report.setdefault("paired_with_gemm", {}).setdefault(impl, {})[str(T)] = got
    if "compiled" in impls and args.device == "cpu":
        report["kernel_build"] = _in_subprocess(dict(base, impl="build", T=0), args.timeout)
    text = _format(report, ours)
    print(text)
    if args.json:
        payload = json.dumps(report, indent=2)
        if args.json == "-":
            print(payload)
        else:
            atomic_write_text(args.json, payload)
    if args.plot:
        _plot(report, args.plot)
    return 0


# name, pattern, name of the row it is compared with; dilation: heads 9..12 of 12 dilated (the paper
# dilates a few heads). Each variant sets globals, dilation and causal itself, so --globals/--dilation/
# --causal do not leak into the rows. With fp32 rows, one more row runs the 1-global pattern in bf16
# against its fp32 row (goal: bf16 forward >= 1.8x fp32 where the CPU has AVX512-BF16).
def _variants(heads: int, dtype: str) -> list[tuple[str, dict, str]]:
    dilated = [1] * heads
    for i, r in zip(range(max(0, heads - 4), heads), (2, 3, 4, 4)):
        dilated[i] = r

    def pattern(globals=0, dilation=(1,), causal=False):
        return dict(globals=globals, dilation=list(dilation), causal=causal)

    plain = "plain window"
    rows = [
        (plain, pattern(), plain),
        ("dilation " + ",".join(map(str, dilated)), pattern(dilation=dilated), plain),
        ("causal", pattern(causal=True), plain),
        ("1 global token", pattern(globals=1), plain),
        ("8 global tokens", pattern(globals=8), plain),
        ("64 global tokens", pattern(globals=64), plain),
        ("causal + dilation + 8 globals", pattern(globals=8, causal=True, dilation=dilated), plain),
    ]
    if dtype == "float32":
        rows.append(("bf16, 1 global token", dict(pattern(globals=1), dtype="bfloat16"), "1 global token"))
    return rows


def _run_variants(args: argparse.Namespace, base: dict, impls: list[str]) -> int:
    from tqdm import tqdm

    lengths = args.lengths
    variants = _variants(args.heads, args.dtype)
    rows = []
    # one subprocess per (impl, T), timing all variants round-robin inside it (see measure_interleaved)
    for impl, T in tqdm([(i, T) for i in impls for T in lengths], desc="bench variants", unit="run", file=sys.stderr):
        specs = [dict(base, impl=impl, T=T, **change) for _, change, _ in variants]
        got = _in_subprocess(dict(base, impl="interleaved", T=T, specs=specs), args.timeout)
        for (name, _, vs), r in zip(variants, got.get("results") or [got] * len(variants)):
            rows.append(dict(impl=impl, T=T, variant=name, vs=vs, **r))
    lines = [
        f"Pattern costs: w={args.window} H={args.heads} D={args.head_dim} B={args.batch} {args.dtype} "
        f"(median of {args.repeats} rounds, variants timed round-robin in one process); ratio = variant time / "
        "time of the row named in 'vs' (goal: dilation, causal <= 1.3; globals <= 1.15; bf16 <= 1 / 1.8 = 0.56 "
        "on CPUs with AVX512-BF16). rel err: max |out - fp32 out| / max |fp32 out| on the same inputs.",
        "",
        f"{'impl':<10} {'T':>6} {'variant':<32} {'fwd ms':>8} {'f+b ms':>8} {'fwd x':>6} {'f+b x':>6}  {'vs':<15} "
        f"{'rel err':>8}",
    ]
    for impl in impls:
        for T in lengths:
            group = {r["variant"]: r for r in rows if r["impl"] == impl and r["T"] == T}
            for r in group.values():
                ref = group[r["vs"]]
                err = r.get("rel_err")
                lines.append(
                    f"{impl:<10} {T:>6} {r['variant']:<32} {_fmt(r.get('fwd_ms')):>8} {_fmt(r.get('fb_ms')):>8} "
                    f"{_ratio(r.get('fwd_ms'), ref.get('fwd_ms')):>6} {_ratio(r.get('fb_ms'), ref.get('fb_ms')):>6}  "
                    f"{r['vs']:<15} {'-' if err is None else f'{err:.1e}':>8}"
                    + (f"  {r['error']}" if r.get("error") else "")
                )
    print("\n".join(lines))
    if args.json:
        payload = json.dumps(dict(config=base, variants=rows), indent=2)
        print(payload) if args.json == "-" else atomic_write_text(args.json, payload)
    return 0


def _in_subprocess(spec: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER, json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(error=f"exit {proc.returncode}: {tail[:200]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- reporting


def _fmt(x, unit=""):
    return "-" if x is None else f"{x:.1f}{unit}"


def _gemm_detail(detail: list[dict] | None) -> str:
    """' (torch.mm a, b; oneDNN c, d GFLOP/s: the faster counts)' when oneDNN was measured."""
    if not detail or not any(d.get("onednn_gflops") for d in detail):
        return ""
    mm = ", ".join(_fmt(d.get("mm_gflops")) for d in detail)
    dnn = ", ".join(_fmt(d.get("onednn_gflops")) for d in detail)
    return f" (torch.mm {mm}; oneDNN {dnn} GFLOP/s: the faster counts)"


def _format(report: dict, ours: list[str]) -> str:
    cfg, results = report["config"], report["results"]
    gemm = [g for g in report["gemm_gflops"] if g]
    lines = [
        f"Longformer attention: w={cfg['window']} H={cfg['heads']} D={cfg['head_dim']} B={cfg['batch']} "
        f"{cfg['dtype']} globals={cfg['globals']} dilation={cfg['dilation']} causal={cfg['causal']} "
        f"on {cfg.get('device', 'cpu')} (median of {cfg['repeats']}; peak = "
        f"{'CUDA max_memory_allocated' if cfg.get('device') == 'cuda' else 'RSS'} rise, inputs excluded)",
        "dense GEMM rate in this run (start, end): " + ", ".join(f"{g:.0f} GFLOP/s" for g in gemm)
        + _gemm_detail(report.get("gemm_detail")),
    ]
    build = report.get("kernel_build")
    if build:
        lines.append(
            f"compiled kernel: one-time build {_fmt(build.get('build_s'), ' s')} (fresh, in an empty cache), "
            f"load from the cache {_fmt(build.get('load_ms'), ' ms')}; SIMD width {build.get('simd')} floats"
            + (f"; {build['error']}" if build.get("error") else "")
        )
    by = {(r["impl"], r["T"]): r for r in results}
    lengths = sorted({r["T"] for r in results})
    impls = list(dict.fromkeys(r["impl"] for r in results))
    head = f"{'T':>6} {'impl':<16} {'fwd ms':>9} {'f+b ms':>9} {'fwd MB':>8} {'f+b MB':>8} {'compile s':>9}  notes"
    lines += ["", head, "-" * len(head)]
    for T in lengths:
        for impl in impls:
            r = by.get((impl, T), {})
            note = r.get("error") or r.get("note") or ""
            if r.get("compile_bwd_s") is not None:
                note = f"backward compile {r['compile_bwd_s']:.1f} s; " + note
            lines.append(
                f"{T:>6} {impl:<16} {_fmt(r.get('fwd_ms')):>9} {_fmt(r.get('fb_ms')):>9} "
                f"{_fmt(r.get('fwd_mb')):>8} {_fmt(r.get('fb_mb')):>8} {_fmt(r.get('compile_s')):>9}  {note}"
            )
    flop_per_T = 4 * (2 * cfg["window"] + 1) * cfg["heads"] * cfg["head_dim"] * cfg["batch"]
    for mine in [i for i in impls if i in ours]:
        lines += ["", f"{mine}: speed-up over each peer (peer time / {mine} time), fwd | fwd+bwd"]
        for T in lengths:
            m = by.get((mine, T), {})
            parts = []
            for peer in impls:
                p = by.get((peer, T), {})
                if peer == mine or not p:
                    continue
                f = _ratio(p.get("fwd_ms"), m.get("fwd_ms"))
                fb = _ratio(p.get("fb_ms"), m.get("fb_ms"))
                parts.append(f"{peer} {f} | {fb}")
            lines.append(f"  T={T}: " + "; ".join(parts))
        for T in lengths:
            t = by.get((mine, T), {}).get("fwd_ms")
            if t:
                rate = flop_per_T * T / (t / 1e3) / 1e9
                share = f", {100 * rate / max(gemm):.0f}% of the GEMM rate" if gemm else ""
                lines.append(f"  T={T}: useful forward rate {rate:.1f} GFLOP/s (4*T*(2w+1)*H*D*B){share}")
            paired = report.get("paired_with_gemm", {}).get(mine, {}).get(str(T), {})
            if paired.get("ratio"):
                clock = "thread CPU time" if paired.get("cpu_time") else "wall time"
                lines.append(f"  T={T}: forward and GEMM called alternately in one process: the forward's useful rate is "
                             f"{100 * paired['ratio']:.0f}% of the GEMM's (median of {paired['pairs']} pairs, {clock}; "
                             f"forward {paired['fwd_ms']:.1f} ms)")
    lines += ["", "growth (time and memory at the largest T / at T/4), fwd+bwd:"]
    big = lengths[-1]
    if big // 4 in lengths:
        for impl in impls:
            a, b = by.get((impl, big), {}), by.get((impl, big // 4), {})
            pair = report.get("growth_interleaved", {}).get(impl)
            same = ""
            if isinstance(pair, list) and len(pair) == 2:
                same = f"  [in one process, interleaved: time x{_ratio(pair[1]['fb_ms'], pair[0]['fb_ms'])}]"
            lines.append(
                f"  {impl:<16} time x{_ratio(a.get('fb_ms') or a.get('fwd_ms'), b.get('fb_ms') or b.get('fwd_ms'))}  "
                f"memory x{_ratio(a.get('fb_mb') or a.get('fwd_mb'), b.get('fb_mb') or b.get('fwd_mb'))}  (T={big} / T={big // 4})"
                + same
            )
    else:
        lines.append(f"  (needs T={big // 4} among --lengths)")
    return "\n".join(lines)


def _ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    impls = list(dict.fromkeys(r["impl"] for r in report["results"]))
    for impl in impls:
        rows = sorted((r for r in report["results"] if r["impl"] == impl), key=lambda r: r["T"])
        for key, ax, style in (("fb_ms", ax_t, "-o"), ("fwd_ms", ax_t, ":x"), ("fb_mb", ax_m, "-o"), ("fwd_mb", ax_m, ":x")):
            pts = [(r["T"], r[key]) for r in rows if r.get(key)]
            if pts:
                suffix = " fwd+bwd" if key.startswith("fb") else " fwd"
                ax.plot(*zip(*pts), style, label=impl + suffix)
    cfg = report["config"]
    for ax, label in ((ax_t, "time (ms)"), (ax_m, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=7)
    fig.suptitle(f"Longformer attention, w={cfg['window']}, H={cfg['heads']}, D={cfg['head_dim']}, {cfg['dtype']}")
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the subprocess


def _worker() -> None:
    from longformer.bench import _attention_cases as cases

    spec = json.loads(sys.argv[1])
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    print(json.dumps(cases.measure(spec)))
