"""`longformer bench {attention,model,led}`: each benchmark lives in its own module."""
from __future__ import annotations

import importlib

# name -> module exposing `add_arguments(parser)` and `run(args) -> int | None`
BENCHMARKS = {
    "attention": ("longformer.bench.attention", "attention kernels vs dense SDPA and transformers"),
    "model": ("longformer.bench.model", "the base-size encoder vs transformers' LongformerModel, plain and accelerated"),
    "led": ("longformer.bench.led", "LED encoder (or generate) time and memory vs T, vs transformers' LED plain and accelerated"),
    "layer": ("longformer.bench.layer", "one layer's forward in a torch profiler trace (share of aten::copy_)"),
    "export": ("longformer.bench.export", "the ONNX export in onnxruntime vs our eager encoder and transformers'"),
}


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (ratios against peers measured in the same run)")
    inner = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if module_name == err.name or module_name.startswith(f"{err.name}."):
                continue
            raise
        parser = inner.add_parser(name, help=help_text)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
