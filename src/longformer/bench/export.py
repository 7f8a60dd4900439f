"""`longformer bench export`: the exported ONNX graph in onnxruntime vs our eager encoder vs transformers'
eager LongformerModel, same weights, at several lengths (time and peak memory).

The weights are a seeded random transformers LongformerModel (bench/model.py's checkpoint); it is
exported with `longformer.export.export_onnx` (which checks the graph against eager before writing).
Each implementation runs in its own process so that its peak memory is its own, and their runs are
interleaved (round-robin) so that the machine's drifting speed does not favour one; the outputs at
the shortest length are compared before any number is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .model import make_checkpoint
from .workers import Bench, run_interleaved, serve

# onnxruntime-noarena: the same graph with the CPU memory arena off (SessionOptions.enable_cpu_mem_arena),
# which returns freed buffers instead of keeping the arena's (power-of-two grown) peak
IMPLS = ("onnxruntime", "onnxruntime-noarena", "ours", "transformers")
MEMORY_GROWTH_GOAL = 4.5  # peak memory of onnxruntime at 16384 / at 4096
SPEEDUP_GOAL = 2.0  # onnxruntime forward vs transformers' eager at 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (default 2; 12 = base)")
    parser.add_argument("--lengths", type=str, default="4096,16384", help="comma-separated T (default 4096,16384)")
    parser.add_argument("--window", type=int, default=256, help="one-sided window w (default 256)")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size (default 768)")
    parser.add_argument("--heads", type=int, default=12, help="attention heads (default 12)")
    parser.add_argument("--intermediate", type=int, default=3072, help="FFN size (default 3072)")
    parser.add_argument("--global-tokens", type=int, default=1, help="leading global tokens (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (default 3; median)")
    # onnxruntime's default session runs its second call at about twice the steady time while its memory
    # arena settles (measured at T=4096: 1.37, 2.26, 1.20, 1.18 s): one warm-up run was not enough, and
    # a median of two then averaged in that call. Every implementation gets the same warm-up.
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first, for every implementation "
                        "(default 2; their times are printed)")
    parser.add_argument("--impls", type=str, default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)}")
    parser.add_argument("--json", type=str, default=None, metavar="PATH", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        lengths = []
    impls = [x.strip() for x in args.impls.split(",") if x.strip()]
    if not lengths or min(lengths) < 2 or any(i not in IMPLS for i in impls) or not impls:
        print(f"longformer bench export: error: need --lengths of ints >= 2 and --impls from {IMPLS}; got "
              f"{args.lengths!r}, {args.impls!r}", file=sys.stderr)
        return 2
    if (args.hidden % args.heads or args.layers < 1 or args.repeats < 1 or args.warmup < 0
            or not 0 <= args.global_tokens <= min(lengths)):
        print("longformer bench export: error: need --hidden divisible by --heads, --layers and --repeats >= 1, "
              "--warmup >= 0, "
              "0 <= --global-tokens <= the shortest length", file=sys.stderr)
        return 2
    from ..export import export_onnx

    with tempfile.TemporaryDirectory(prefix="longformer-bench-export-") as tmp:
        tmp = Path(tmp)
        ns = argparse.Namespace(**{**vars(args), "length": max(lengths)})
        make_checkpoint(tmp / "model", ns)
        start = time.perf_counter()
        onnx = any(i.startswith("onnxruntime") for i in impls)
        exported = export_onnx(tmp / "model", tmp / "model.onnx") if onnx else None
        export_seconds = time.perf_counter() - start
        results: dict[int, dict[str, Any]] = {}
        for T in lengths:
            print(f"bench export: T={T} {', '.join(impls)}, interleaved ...", file=sys.stderr, flush=True)
            specs = {impl: {"impl": impl, "length": T, "model_dir": str(tmp / "model"), "onnx": str(tmp / "model.onnx"),
                            "global_tokens": args.global_tokens,
                            "output_path": str(tmp / f"out-{impl}.npy") if T == min(lengths) else None}
                     for impl in impls}
            results[T] = run_interleaved("longformer.bench.export", specs, args.warmup + args.repeats, args.warmup,
                                         tmp, label=f"T={T} ")
        diffs = _compare(tmp, impls)
    report = {"config": {k: getattr(args, k) for k in ("layers", "window", "hidden", "heads", "intermediate",
                                                       "global_tokens", "repeats", "warmup")},
              "lengths": lengths, "export_seconds": export_seconds,
              "export_check_max_abs_diff": exported.max_abs_diff if exported else None,
              "max_abs_diff_vs_ours": diffs, "results": {str(T): r for T, r in results.items()}}
    _print(report, lengths, impls)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _compare(tmp: Path, impls: list[str]) -> dict[str, float]:
    import numpy as np

    if "ours" not in impls:
        return {}
    ours = np.load(tmp / "out-ours.npy")
    return {i: float(np.abs(np.load(tmp / f"out-{i}.npy") - ours).max()) for i in impls if i != "ours"}


def _print(report: dict[str, Any], lengths: list[int], impls: list[str]) -> None:
    c = report["config"]
    print(f"\nbench export: {c['layers']} layers x {c['hidden']} ({c['heads']} heads, FFN {c['intermediate']}), B=1, "
          f"w={c['window']}, {c['global_tokens']} global token(s), fp32; median of {c['repeats']} after {c['warmup']} warm-up run(s), runs interleaved; "
          f"export took {report['export_seconds']:.0f} s")
    for impl, d in report["max_abs_diff_vs_ours"].items():
        print(f"same weights check at T={lengths[0]}: max |{impl} - ours| = {d:.2e}")
    print(f"  {'T':>6} " + " ".join(f"{i + ' s':>16} {i + ' MB':>17}" for i in impls))
    for T in lengths:
        r = report["results"][str(T)]
        print(f"  {T:>6} " + " ".join(f"{r[i]['seconds']:>16.3f} {r[i]['extra_peak_mb']:>17.0f}" for i in impls))
    res = report["results"]
    for o in (i for i in impls if i.startswith("onnxruntime")):
        if len(lengths) > 1:
            a, b = res[str(lengths[0])][o], res[str(lengths[-1])][o]
            growth = b["extra_peak_mb"] / max(a["extra_peak_mb"], 1e-9)
            print(f"  {o} peak memory {lengths[-1]}/{lengths[0]}: x{growth:.2f} (goal <= {MEMORY_GROWTH_GOAL}x; "
                  f"time x{b['seconds'] / a['seconds']:.2f})")
        if "transformers" in impls:
            for T in lengths:
                r = res[str(T)]
                print(f"  T={T}: {o} vs transformers' eager {r['transformers']['seconds'] / r[o]['seconds']:.2f}x"
                      + (f" (goal >= {SPEEDUP_GOAL}x at 4096)" if T == 4096 else "")
                      + (f", vs our eager {r['ours']['seconds'] / r[o]['seconds']:.2f}x" if "ours" in r else ""))
    for T in lengths:
        r = report["results"][str(T)]
        if c["warmup"]:
            print(f"  T={T} warm-up runs (s): " + "; ".join(
                f"{i} " + ", ".join(f"{x:.2f}" for x in r[i]["all_seconds"][: c["warmup"]]) for i in impls))
    print("  MB = peak RSS during the runs minus RSS with the model loaded (weights and inputs excluded)")


def _prepare(spec: dict[str, Any]) -> Bench:
    """In the worker: load the implementation and the (1, T) input, one global token per spec."""
    import numpy as np
    import torch

    T, impl = spec["length"], spec["impl"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50265, (1, T), generator=g)
    ids[:, 0] = 0
    mask = torch.ones(1, T, dtype=torch.long)
    glob = torch.zeros(1, T, dtype=torch.long)
    glob[:, : spec["global_tokens"]] = 1
    if impl.startswith("onnxruntime"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = impl == "onnxruntime"
        session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "global_attention_mask": glob.numpy()}

        def step():
            return session.run(["last_hidden_state"], feed)[0]
    else:
        if impl == "ours":
            from longformer.encoder import LongformerModel
        else:
            from transformers import LongformerModel
        model = LongformerModel.from_pretrained(spec["model_dir"]).eval()

        def step():
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state.numpy()

    return Bench(step, lambda out, path: np.save(path, out))


if __name__ == "__main__":
    serve(json.loads(Path(sys.argv[1]).read_text()), _prepare)
