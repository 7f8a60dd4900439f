"""`longformer bench model`: our encoder vs transformers' LongformerModel with the same weights, and
that transformers model after `longformer.accelerate` (its self-attention on our core).

One run measures forward fp32, forward bf16 and a training step (forward + backward) in fp32 and in
bf16 autocast (fp32 weights, `torch.autocast("cpu", torch.bfloat16)` around the forward, as mixed-
precision training runs) for the three. Within a mode each row runs in its own process (its peak
memory its own), the three side by side with their runs interleaved (bench/workers.py). The weights
are a seeded random transformers LongformerModel saved with save_pretrained; ours loads that dir,
and the fp32 outputs of the three are compared before any number is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .workers import Bench, run_interleaved, serve

MODES = ("forward-fp32", "forward-bf16", "train-fp32", "train-bf16")
ACCELERATED = "transformers+accelerate"
IMPLS = ("transformers", ACCELERATED, "ours")
# Goals from the issues: speed-up over plain transformers (and the training step's peak-memory ratio).
GOALS = {"forward-fp32": 1.5, "forward-bf16": 2.0, "train-fp32": 1.7, "train-bf16": None}
ACCELERATE_GOALS = {"forward-fp32": 2.0, "train-fp32": 2.5}
TRAIN_MEMORY_GOAL = 0.6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (default 12 = base; 1-2 for a quick check)")
    parser.add_argument("--length", type=int, default=4096, help="tokens T (default 4096)")
    parser.add_argument("--window", type=int, default=256, help="one-sided window w (default 256 = HF attention_window 512)")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size (default 768)")
    parser.add_argument("--heads", type=int, default=12, help="attention heads (default 12)")
    parser.add_argument("--intermediate", type=int, default=3072, help="FFN size (default 3072)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--global-tokens", type=int, default=1, help="leading global tokens, like [CLS] (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (default 2; the median is reported)")
    parser.add_argument("--modes", type=str, default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--json", type=str, default=None, metavar="PATH", help="also write the results as JSON ('-' = stdout)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where both models run (default cpu); on cuda peak memory is torch.cuda.max_memory_allocated")
    parser.add_argument("--attention-impl", default="auto",
                        help="impl of our encoder's attention (default auto; e.g. blocked or flex on cuda)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"longformer bench model: error: --modes must be a comma-separated subset of {MODES}, got {args.modes!r}")
        return 2
    for name in ("layers", "length", "hidden", "heads", "intermediate", "batch", "repeats"):
        if getattr(args, name) < 1:
            print(f"longformer bench model: error: --{name} must be >= 1, got {getattr(args, name)}")
            return 2
    if args.hidden % args.heads or args.window < 0 or not 0 <= args.global_tokens <= args.length:
        print("longformer bench model: error: need --hidden divisible by --heads, --window >= 0 and "
              f"0 <= --global-tokens <= --length; got hidden={args.hidden}, heads={args.heads}, "
              f"window={args.window}, global_tokens={args.global_tokens}")
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("longformer bench model: error: --device cuda but torch.cuda.is_available() is False; use --device cpu")
            return 2
    from longformer.attention import IMPLS as ATTENTION_IMPLS

    if args.attention_impl not in ATTENTION_IMPLS:
        print(f"longformer bench model: error: --attention-impl must be one of {ATTENTION_IMPLS}, got {args.attention_impl!r}")
        return 2
    with tempfile.TemporaryDirectory(prefix="longformer-bench-model-") as tmp:
        model_dir = Path(tmp) / "model"
        make_checkpoint(model_dir, args)
        spec = {"model_dir": str(model_dir), "length": args.length, "batch": args.batch, "vocab": 50265,
                "global_tokens": args.global_tokens, "repeats": args.repeats, "threads": args.threads,
                "device": args.device, "attention_impl": args.attention_impl}
        results: dict[str, dict[str, Any]] = {}
        for mode in tqdm(modes, desc="bench model (per mode: one process per row, runs interleaved)",
                         file=sys.stderr):
            out = {impl: Path(tmp) / f"{mode}-{impl}.pt" if mode == "forward-fp32" else None for impl in IMPLS}
            specs = {impl: {**spec, "mode": mode, "impl": impl, "output_path": str(out[impl]) if out[impl] else None}
                     for impl in IMPLS}
            results[mode] = run_interleaved("longformer.bench.model", specs, 1 + args.repeats, 1, Path(tmp),
                                            label=f"{mode} ")
        max_diff = compare_outputs(Path(tmp)) if "forward-fp32" in modes else None
        accelerate_diff = compare_outputs(Path(tmp), ACCELERATED) if "forward-fp32" in modes else None
    report = summarize(args, results, max_diff, accelerate_diff)
    print_report(report)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


def make_checkpoint(path: Path, args: argparse.Namespace) -> None:
    """A seeded random transformers LongformerModel (dropout off: the two models do the same math)."""
    import torch
    import transformers

    config = transformers.LongformerConfig(
        vocab_size=50265, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate, attention_window=2 * args.window, max_position_embeddings=args.length + 2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=1, layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    transformers.LongformerModel(config).save_pretrained(path)


def compare_outputs(tmp: Path, impl: str = "ours") -> float:
    """max |impl - transformers| on the fp32 forward output."""
    import torch

    a, b = (torch.load(tmp / f"forward-fp32-{name}.pt", weights_only=True) for name in ("transformers", impl))
    return float((a - b).abs().max())


def summarize(args: argparse.Namespace, results: dict[str, dict[str, Any]], max_diff: float | None,
              accelerate_diff: float | None = None) -> dict[str, Any]:
    rows = {}
    for mode, runs in results.items():
        hf, ours, acc = runs["transformers"], runs["ours"], runs[ACCELERATED]
        rows[mode] = {
            "transformers": hf,
            "ours": ours,
            ACCELERATED: acc,
            "speedup": hf["seconds"] / ours["seconds"],
            "memory_ratio": ours["extra_peak_mb"] / max(hf["extra_peak_mb"], 1e-9),
            "speedup_goal": GOALS[mode],
            "accelerate_speedup": hf["seconds"] / acc["seconds"],
            "accelerate_memory_ratio": acc["extra_peak_mb"] / max(hf["extra_peak_mb"], 1e-9),
            "accelerate_speedup_goal": ACCELERATE_GOALS.get(mode),
        }
    config = {k: getattr(args, k) for k in ("layers", "length", "window", "hidden", "heads", "intermediate", "batch",
                                           "global_tokens", "repeats", "device", "attention_impl")}
    return {"config": config, "threads": next(iter(next(iter(results.values())).values()))["threads"],
            "max_abs_diff_fp32_output": max_diff, "max_abs_diff_fp32_accelerate": accelerate_diff, "results": rows}


def print_report(report: dict[str, Any]) -> None:
    c = report["config"]
    print(f"\nbench model: {c['layers']} layers x {c['hidden']} ({c['heads']} heads, FFN {c['intermediate']}), "
          f"B={c['batch']}, T={c['length']}, w={c['window']} (HF attention_window {2 * c['window']}), "
          f"{c['global_tokens']} global token(s), {report['threads']} threads, on {c.get('device', 'cpu')} "
          f"(our attention impl={c.get('attention_impl', 'auto')}); median of {c['repeats']} runs after a warm-up")
    if report["max_abs_diff_fp32_output"] is not None:
        print(f"same weights check: max |ours - transformers| on the fp32 output = {report['max_abs_diff_fp32_output']:.2e}"
              f", max |transformers+accelerate - transformers| = {report['max_abs_diff_fp32_accelerate']:.2e}")
    print(f"  {'mode':14} {'row':24} {'seconds':>9} {'speed-up':>9} {'goal':>7}   {'peak MB':>9} {'vs HF':>7}")
    for mode, r in report["results"].items():
        hf = r["transformers"]
        print(f"  {mode:14} {'transformers':24} {hf['seconds']:>8.3f}s {'1.00x':>9} {'':>7}   {hf['extra_peak_mb']:>9.0f}")
        for impl, speed, goal, mem in ((ACCELERATED, r["accelerate_speedup"], r["accelerate_speedup_goal"],
                                        r["accelerate_memory_ratio"]),
                                       ("ours", r["speedup"], r["speedup_goal"], r["memory_ratio"])):
            goal_text = f">={goal}x" if goal else ""
            mem_goal = f" (goal <= {TRAIN_MEMORY_GOAL}x)" if mode == "train-fp32" else ""
            row = r[impl]
            print(f"  {'':14} {impl:24} {row['seconds']:>8.3f}s {speed:>8.2f}x {goal_text:>7}   "
                  f"{row['extra_peak_mb']:>9.0f} {mem:>6.2f}x{mem_goal}")
    if c.get("device") == "cuda":
        print("  peak MB = torch.cuda.max_memory_allocated during the runs minus the allocation with the model loaded")
    else:
        print("  peak MB = peak RSS during the runs minus RSS with the model loaded (weights and inputs excluded)")


# ----------------------------------------------------------------------------- in the worker process
def _prepare(spec: dict[str, Any]) -> Bench:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if spec["impl"] == "ours":
        from longformer.encoder import LongformerModel

        model = LongformerModel.from_pretrained(spec["model_dir"], impl=spec.get("attention_impl", "auto"))
    else:
        import transformers

        model = transformers.LongformerModel.from_pretrained(spec["model_dir"])
        if spec["impl"] == ACCELERATED:
            from ..interop.swap import accelerate

            accelerate(model)
    mode = spec["mode"]
    if mode == "forward-bf16":
        model = model.to(torch.bfloat16)
    model = model.to(device)
    g = torch.Generator().manual_seed(1)
    B, T = spec["batch"], spec["length"]
    ids = torch.randint(3, spec["vocab"], (B, T), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(B, T, dtype=torch.long)
    global_mask = torch.zeros(B, T, dtype=torch.long)
    global_mask[:, : spec["global_tokens"]] = 1
    inputs = {k: t.to(device) for k, t in
              (("input_ids", ids), ("attention_mask", mask), ("global_attention_mask", global_mask))}
    train = mode.startswith("train-")
    model.train(train)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "train-bf16")

    def step() -> torch.Tensor:
        if train:
            model.zero_grad(set_to_none=True)
            with autocast:
                out = model(**inputs).last_hidden_state
            out.float().square().mean().backward()
            return out.detach()
        with torch.inference_mode():
            return model(**inputs).last_hidden_state

    return Bench(step, lambda out, path: torch.save(out.float().cpu().clone(), path), device.type)


if __name__ == "__main__":
    serve(json.loads(Path(sys.argv[1]).read_text()), _prepare)
