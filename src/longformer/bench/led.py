"""`longformer bench led`: the LED encoder's time and peak memory against T, ours vs transformers' LED
and vs transformers' LED after `longformer.accelerate` (its encoder self-attention on our core).

The encoder is where LED differs from BART (the decoder is the same BART decoder in both), so this
times an encoder forward pass (inference mode, first token global) of a seeded random base-size LED
encoder (6 layers x 768, 12 heads, w = 512, i.e. allenai/led-base-16384's shape) at each T. Both
implementations load the same weights from one file, and their outputs are compared at a short T
before any number is reported. Each (implementation, T) runs in a fresh process, so the peak resident
memory reported is that measurement's own (it includes the Python + torch baseline, reported too).

With --generate-tokens N it times `generate` instead (N new tokens, --beams beams, exactly N: EOS is
held off until then) of a whole seeded random LED (decoder as deep as the encoder), saved once with
transformers' save_pretrained and loaded by each implementation; the table says whether every
implementation produced the same tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACCELERATED = "transformers+accelerate"
IMPLS = ("ours", "transformers", ACCELERATED)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384",
                        help="comma-separated encoder lengths T (default 1024,2048,4096,8192,16384)")
    parser.add_argument("--layers", type=int, default=6, help="encoder layers (default 6 = led-base)")
    parser.add_argument("--hidden", type=int, default=768, help="d_model (default 768)")
    parser.add_argument("--heads", type=int, default=12, help="attention heads (default 12)")
    parser.add_argument("--ffn", type=int, default=3072, help="feed-forward size (default 3072)")
    parser.add_argument("--window", type=int, default=512, help="one-sided window w (default 512 = HF attention_window 1024)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per measurement; the fastest is reported")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--generate-tokens", type=int, default=0, metavar="N",
                        help="time generate() of N new tokens instead of the encoder pass (default 0: encoder)")
    parser.add_argument("--beams", type=int, default=4, help="beams for --generate-tokens (default 4)")
    parser.add_argument("--transformers-max-length", type=int, default=16384,
                        help="skip transformers above this T (its chunked attention is slow and memory hungry)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        print(f"longformer bench led: error: --lengths must be comma-separated ints, got {args.lengths!r}")
        return 2
    impls = [x.strip() for x in args.impls.split(",") if x.strip()]
    if not lengths or min(lengths) < 1 or not impls or set(impls) - set(IMPLS):
        print(f"longformer bench led: error: need --lengths >= 1 and --impls within {IMPLS}")
        return 2
    if args.hidden % args.heads or args.window < 1 or args.layers < 1 or args.repeats < 1:
        print("longformer bench led: error: need --hidden divisible by --heads, --window >= 1, --layers >= 1, --repeats >= 1")
        return 2
    if args.generate_tokens < 0 or args.beams < 1:
        print(f"longformer bench led: error: need --generate-tokens >= 0 and --beams >= 1, got "
              f"{args.generate_tokens} and {args.beams}")
        return 2
    spec = dict(layers=args.layers, hidden=args.hidden, heads=args.heads, ffn=args.ffn, window=args.window,
                max_positions=max(max(lengths), 1024), dtype=args.dtype, repeats=args.repeats, threads=args.threads,
                generate=args.generate_tokens, beams=args.beams)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-led-") as tmp:
        weights = Path(tmp) / ("led" if args.generate_tokens else "encoder.safetensors")
        check = _worker({**spec, "mode": "init", "weights": str(weights)})
        what = "LED (encoder + decoder)" if args.generate_tokens else "LED encoder"
        print(f"weights: seeded random {what}, {check['params'] / 1e6:.1f}M parameters")
        if "transformers" in impls and len(impls) > 1 and not args.generate_tokens:
            diff = _worker({**spec, "mode": "check", "weights": str(weights), "T": min(1100, max(lengths)),
                            "impls": impls})
            print(f"check at T={diff['T']}: max |other - transformers| = {diff['max_abs_diff']:.2e} (fp32, {impls})")
            if diff["max_abs_diff"] > 1e-3:
                print("longformer bench led: error: the two encoders disagree; not timing them")
                return 1
        jobs = [(T, impl) for T in lengths for impl in impls
                if not (impl == "transformers" and T > args.transformers_max_length)]
        for T, impl in tqdm(jobs, desc="bench led", unit="run", file=sys.stderr):
            try:
                out = _worker({**spec, "mode": "time", "impl": impl, "T": T, "weights": str(weights)})
            except RuntimeError as err:
                out = {"impl": impl, "T": T, "error": str(err).splitlines()[-1][:200]}
            results.append(out)
    _print_table(results, lengths, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": spec, "results": results}, indent=2) + "\n")
    return 0


def _print_table(results: list[dict[str, Any]], lengths: list[int], args: argparse.Namespace) -> None:
    by = {(r["impl"], r["T"]): r for r in results}
    impls = [i for i in IMPLS if any(r["impl"] == i for r in results)]
    what = (f"generate {args.generate_tokens} tokens, {args.beams} beam(s)" if args.generate_tokens
            else "LED encoder forward")
    print(f"\n{what}, {args.layers} layers x {args.hidden}, w={args.window}, {args.dtype}, batch 1, "
          f"first token global, threads={args.threads or 'default'}")
    head = " | ".join(f"{i + ' s':>14} {'GiB':>5}" for i in impls)
    short = {"ours": "ours", ACCELERATED: "+accelerate"}
    speed_head = "".join(f" {'HF/' + short[i]:>16}" for i in impls if i != "transformers")
    print(f"{'T':>6} | {head} |{speed_head}" + ("  same tokens" if args.generate_tokens else ""))
    for T in lengths:
        cells = []
        for i in impls:
            r = by.get((i, T), {})
            cells.append(f"{'-':>14} {'-':>5}" if not r else f"{'error':>14} {'':>5}" if "error" in r
                         else f"{r['seconds']:>14.2f} {r['peak_gb']:>5.2f}")
        h = by.get(("transformers", T), {})
        speeds = ""
        for i in impls:
            if i == "transformers":
                continue
            o = by.get((i, T), {})
            speeds += f" {h['seconds'] / o['seconds']:>15.2f}x" if "seconds" in o and "seconds" in h else f" {'-':>16}"
        same = ""
        if args.generate_tokens:
            tokens = [by[(i, T)]["tokens"] for i in impls if "tokens" in by.get((i, T), {})]
            same = f"  {'yes' if len(tokens) > 1 and all(t == tokens[0] for t in tokens) else 'NO':>11}"
        print(f"{T:>6} | {' | '.join(cells)} |{speeds}{same}")
    base = [r["baseline_gb"] for r in results if "baseline_gb" in r]
    if base:
        print(f"(GiB = the process's peak RSS; before the pass (weights mapped, not yet all read): ~{min(base):.2f} GiB)")
    for r in results:
        if "error" in r:
            print(f"{r['impl']} at T={r['T']}: {r['error']}")


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh Python process; returns its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "longformer.bench.led", json.dumps(job)],
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"worker exited with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- inside the worker process
def _hf_config(job: dict[str, Any]):
    from transformers import LEDConfig

    return LEDConfig(vocab_size=50265, d_model=job["hidden"], encoder_layers=job["layers"],
                     decoder_layers=job["layers"] if job.get("generate") else 1,
                     encoder_attention_heads=job["heads"], decoder_attention_heads=job["heads"],
                     encoder_ffn_dim=job["ffn"], decoder_ffn_dim=job["ffn"], attention_window=2 * job["window"],
                     max_encoder_position_embeddings=job["max_positions"], dropout=0.0)


def _build(job: dict[str, Any], impl: str):
    import torch

    if job.get("generate"):
        return _build_generator(job, impl)
    from safetensors.torch import load_file

    state = load_file(job["weights"])
    if impl in ("transformers", ACCELERATED):
        from transformers.models.led.modeling_led import LEDEncoder

        with torch.device("meta"):
            model = LEDEncoder(_hf_config(job))
    else:
        from ..led.config import LEDConfig
        from ..led.modeling import LEDEncoder

        cfg = LEDConfig.from_dict(_hf_config(job).to_dict())
        with torch.device("meta"):
            model = LEDEncoder(cfg, torch.nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_token_id))
    model.load_state_dict(state, strict=True, assign=True)
    if impl == ACCELERATED:
        from ..interop.swap import accelerate

        accelerate(model)
    return model.eval().to(getattr(torch, job["dtype"]))


def _build_generator(job: dict[str, Any], impl: str):
    """A whole LED for --generate-tokens, from the transformers checkpoint dir the init job wrote."""
    import torch

    if impl == "ours":
        from ..led import LEDForConditionalGeneration

        model = LEDForConditionalGeneration.from_pretrained(job["weights"])
    else:
        import transformers

        model = transformers.LEDForConditionalGeneration.from_pretrained(job["weights"])
        if impl == ACCELERATED:
            from ..interop.swap import accelerate

            accelerate(model)
    return model.eval().to(getattr(torch, job["dtype"]))


def _forward(model, impl: str, ids, glob):
    if impl in ("transformers", ACCELERATED):
        return model(input_ids=ids, global_attention_mask=glob).last_hidden_state
    return model(ids, None, glob.bool())


def _generate(model, job: dict[str, Any], ids, glob):
    """Exactly job["generate"] new tokens (EOS held off), greedy or beam search, for every implementation."""
    import torch

    n = job["generate"]
    return model.generate(ids, attention_mask=torch.ones_like(ids), global_attention_mask=glob, max_new_tokens=n,
                          min_new_tokens=n, num_beams=job["beams"], do_sample=False)


def _main(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if job["mode"] == "init" and job.get("generate"):
        import transformers

        torch.manual_seed(0)
        model = transformers.LEDForConditionalGeneration(_hf_config(job))
        model.save_pretrained(job["weights"])
        return {"params": sum(p.numel() for p in model.parameters())}
    if job["mode"] == "init":
        from safetensors.torch import save_file
        from transformers.models.led.modeling_led import LEDEncoder

        torch.manual_seed(0)
        model = LEDEncoder(_hf_config(job))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, job["weights"])
        return {"params": sum(v.numel() for v in state.values())}
    T = job["T"]
    g = torch.Generator().manual_seed(T)
    ids = torch.randint(3, 50265, (1, T), generator=g)
    glob = torch.zeros(1, T, dtype=torch.long)
    glob[:, 0] = 1
    if job["mode"] == "check":
        with torch.inference_mode():
            ref = _forward(_build({**job, "dtype": "float32"}, "transformers"), "transformers", ids, glob)
            diffs = [float((_forward(_build({**job, "dtype": "float32"}, i), i, ids, glob) - ref).abs().max())
                     for i in job["impls"] if i != "transformers"]
        return {"T": T, "max_abs_diff": max(diffs)}
    impl = job["impl"]
    model = _build(job, impl)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    times = []
    with torch.inference_mode():
        for _ in range(job["repeats"]):
            start = time.perf_counter()
            out = _generate(model, job, ids, glob) if job.get("generate") else _forward(model, impl, ids, glob)
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {"impl": impl, "T": T, "seconds": min(times), "all_seconds": times, "peak_gb": peak, "baseline_gb": baseline}
    if job.get("generate"):
        result["tokens"] = out.tolist()
    return result


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # transformers' "padded to a multiple of the window" notice
    print(json.dumps(_main(json.loads(sys.argv[1]))))
