"""The `longformer` command. Each subcommand lives in its own module, which registers its parsers.

Running `longformer` with no arguments runs the main job (`longformer demo`).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that provide subcommands, each exposing `register(subparsers)`. Each parser it adds sets
# `func=callable(args) -> int | None`. Modules keep heavy imports inside their functions so that
# `longformer --help` stays fast.
COMMAND_MODULES = (
    "longformer.demo",  # demo (the main job)
    "longformer.bench.cli",  # bench attention | model | led
    "longformer.convert",  # convert
    "longformer.finetune.cli",  # finetune, predict
    "longformer.lm.cli",  # train-lm, eval-lm, generate
    "longformer.led.cli",  # summarize
    "longformer.export",  # export (ONNX)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longformer",
        description="Transformers that read long documents. With no command, runs `longformer demo`.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if name == err.name or name.startswith(f"{err.name}."):  # not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv and "demo" in parser._subparsers._group_actions[0].choices:  # noqa: SLF001
        argv = ["demo"]
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)
