"""`longformer bench layer`: where one layer's forward spends its time, from a torch profiler trace.

One layer with random weights (an encoder `LongformerLayer`, an LED encoder layer, or a char-LM
`Block`), B=1, T tokens, `--globals` leading global tokens (encoder and LED), in fp32 or bf16 (the
layer and its input cast, as `bench model`'s forward-bf16 does). After a warm-up, `--repeats`
forwards run under `torch.inference_mode()` inside `torch.profiler.profile`; the report gives each
op's share of the self CPU time of the trace, the share and number of `aten::copy_` calls per
forward (layout copies such as `.contiguous()` and transposes made contiguous, and dtype casts), and
the attention kernel's share. This is the check of the "no layout copies" goal: the kernel reads q,
k and v as the projections make them and writes its output in the layout the output projection reads.
"""
from __future__ import annotations

import argparse
import json
import time

LAYERS = ("encoder", "led", "lm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer", choices=LAYERS, default="encoder", help="which layer (default encoder)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--length", type=int, default=4096, help="tokens T (default 4096)")
    parser.add_argument("--window", type=int, default=256, help="one-sided window w (default 256)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072, help="feed-forward width (default 3072)")
    parser.add_argument("--globals", type=int, default=1, help="leading global tokens (encoder, led; default 1)")
    parser.add_argument("--impl", default="auto", help="attention impl of the layer (default auto)")
    parser.add_argument("--repeats", type=int, default=3, help="profiled forwards after one warm-up (default 3)")
    parser.add_argument("--top", type=int, default=12, help="ops listed (default 12)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")


def build(args: argparse.Namespace):
    """(layer, forward() -> output): the layer in args.dtype with its random input, in eval mode."""
    import torch

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    T, C = args.length, args.hidden
    x = torch.randn(1, T, C, dtype=dtype)
    if args.layer == "lm":
        from longformer.lm.model import Block, rotary_tables

        layer = Block(C, args.heads, args.ffn, args.window, [1] * args.heads, 0.0, args.impl)
        cos, sin = rotary_tables(torch.arange(T), C // args.heads, 10000.0)
        layer = layer.to(dtype).eval()
        return layer, lambda: layer(x, cos, sin)
    is_global = torch.zeros(1, T, dtype=torch.bool)
    is_global[:, : args.globals] = True
    if args.layer == "led":
        from longformer.led.modeling import LEDEncoderLayer

        layer = LEDEncoderLayer(C, args.heads, args.ffn, args.window, 1, "gelu", 0.0, 0.0, 0.0)
        layer.self_attn.longformer_self_attn.impl = args.impl
    else:
        from longformer.encoder.modeling import LongformerLayer

        layer = LongformerLayer(C, args.heads, args.ffn, args.window, 1, dropout=0.0, attention_dropout=0.0,
                                impl=args.impl)
    layer = layer.to(dtype).eval()
    return layer, lambda: layer(x, None, is_global)


def measure(args: argparse.Namespace) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    _, forward = build(args)
    with torch.inference_mode():
        forward()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                forward()
        wall = (time.perf_counter() - t0) / args.repeats
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(
        ({"name": e.key, "self_ms": e.self_cpu_time_total / 1e3 / args.repeats, "share": e.self_cpu_time_total / total,
          "calls": e.count / args.repeats} for e in events),
        key=lambda r: -r["self_ms"],
    )

    def share(prefix: str) -> tuple[float, float]:
        rows = [r for r in ops if r["name"].startswith(prefix)]
        return sum(r["share"] for r in rows), sum(r["calls"] for r in rows)

    copy_share, copy_calls = share("aten::copy_")
    kernel_share, _ = share("longformer::band_attention")
    # torch's addmm (a linear layer with bias) starts by copying the broadcast bias into its output and
    # then accumulates the product onto it: copies of that kind are no layout change, and counted apart
    in_linear = [e for e in prof.events() if e.name == "aten::copy_" and _inside(e, LINEAR_OPS)]
    bias_share = sum(e.self_cpu_time_total for e in in_linear) / total
    return {"config": {k: getattr(args, k) for k in ("layer", "dtype", "length", "window", "hidden", "heads", "ffn",
                                                      "globals", "impl", "repeats")},
            "threads": torch.get_num_threads(), "forward_ms": 1e3 * wall, "copy_share": copy_share,
            "copy_calls": copy_calls, "copy_share_outside_linear": copy_share - bias_share,
            "copy_calls_outside_linear": copy_calls - len(in_linear) / args.repeats, "kernel_share": kernel_share,
            "ops": ops[: args.top]}


LINEAR_OPS = ("aten::addmm", "aten::linear")


def _inside(event, names: tuple[str, ...]) -> bool:
    """Whether a profiler event runs inside (below) an op of one of these names."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


def run(args: argparse.Namespace) -> int:
    for name in ("length", "hidden", "heads", "ffn", "repeats", "top"):
        if getattr(args, name) < 1:
            print(f"longformer bench layer: error: --{name} must be >= 1, got {getattr(args, name)}")
            return 2
    if args.hidden % args.heads or args.window < 0 or not 0 <= args.globals <= args.length:
        print("longformer bench layer: error: need --hidden divisible by --heads, --window >= 0 and "
              f"0 <= --globals <= --length; got hidden={args.hidden}, heads={args.heads}, window={args.window}, "
              f"globals={args.globals}")
        return 2
    report = measure(args)
    c = report["config"]
    print(f"bench layer: {c['layer']} layer, {c['dtype']}, B=1 T={c['length']} w={c['window']} C={c['hidden']} "
          f"H={c['heads']} FFN={c['ffn']} globals={c['globals']} impl={c['impl']}, {report['threads']} threads; "
          f"{c['repeats']} profiled forwards, {report['forward_ms']:.1f} ms each (with the profiler on)")
    print(f"  aten::copy_: {100 * report['copy_share']:.1f}% of the self CPU time, {report['copy_calls']:.0f} calls "
          f"per forward; outside the linear layers (not addmm's bias broadcast): "
          f"{100 * report['copy_share_outside_linear']:.1f}%, {report['copy_calls_outside_linear']:.0f} calls")
    print(f"  attention kernel (longformer::band_attention): {100 * report['kernel_share']:.1f}%")
    print(f"  {'op':52} {'self ms':>9} {'share':>7} {'calls':>6}")
    for r in report["ops"]:
        print(f"  {r['name'][:52]:52} {r['self_ms']:>9.2f} {100 * r['share']:>6.1f}% {r['calls']:>6.0f}")
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0
