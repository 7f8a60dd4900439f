"""The `longformer` command. Each subcommand lives in its own module, which registers its parsers.

Running `longformer` with no arguments runs the main job (`longformer demo`).

Errors: a mistake the user can fix (a `LongformerError`, or a path that is missing or unreadable)
prints one `longformer CMD: error: ...` line and exits with 2; `--debug` or LONGFORMER_DEBUG=1 shows
the traceback instead. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import LongformerError

# OSErrors about the user's paths; others (a full disk, say) keep their traceback.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)

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
    "longformer.pretrain",  # pretrain-mlm, eval-mlm
    "longformer.export",  # export (ONNX)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longformer",
        description="Transformers that read long documents. With no command, runs `longformer demo`.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also LONGFORMER_DEBUG=1)")
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
    debug = args.debug or os.environ.get("LONGFORMER_DEBUG", "") not in ("", "0")
    try:
        result = args.func(args)
    except (LongformerError, *USER_OS_ERRORS) as err:
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        print(f"longformer {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"longformer {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
