"""The `longformer export` subcommand."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a Longformer model (with its task head) or the LED encoder to ONNX",
        description=(
            "Export the model class named in MODEL/config.json to an ONNX file with dynamic batch and sequence "
            "length: inputs input_ids, attention_mask, global_attention_mask (int64); outputs named as the "
            "model's output fields. The attention is exact (per-layer windows, dilation, global tokens, "
            "padding) and its memory linear in the length. Before writing, the graph is checked (onnx "
            "checker, then onnxruntime against eager PyTorch at a length other than the traced one)."
        ),
    )
    parser.add_argument("model", help="checkpoint dir (config.json + weights, ours or transformers') or a hub id org/name[@revision]")
    parser.add_argument("out", help="the .onnx file to write (replaced atomically)")
    parser.add_argument("--part", choices=("model", "encoder"), default="model",
                        help="model: the whole class named in config.json (default); encoder: its bare encoder "
                             "(needed for LED, whose decoder is not exported)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18, the lowest the exporter emits)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="verify with onnx.checker and onnxruntime vs eager before writing (default: on)")
    parser.add_argument("--trace-length", type=int, default=None, help="tokens of the tracing input (default 64)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .graphs import ExportError
    from .onnx_export import DEFAULT_OPSET, DEFAULT_TRACE_LENGTH, export_onnx

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    trace_length = DEFAULT_TRACE_LENGTH if args.trace_length is None else args.trace_length
    try:
        result = export_onnx(args.model, args.out, part=args.part, opset=opset, check=args.check,
                             trace_length=trace_length)
    except ExportError as err:
        print(f"longformer export: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name in ("onnx", "onnxruntime", "onnxscript"):
            print(f"longformer export: error: {err.name} is not installed: pip install 'longformer[export]'",
                  file=sys.stderr)
            return 2
        raise
    checked = (f"checked: onnxruntime = eager within {result.max_abs_diff:.2g} at T={result.checked_lengths}"
               if result.checked_lengths else "not checked (--no-check)")
    print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB): {result.architecture} ({result.part}), opset "
          f"{result.opset}, inputs {', '.join(result.input_names)} -> {', '.join(result.output_names)}; {checked}")
    return 0
