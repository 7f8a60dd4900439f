"""`longformer convert SRC DST`: make a long Longformer from a BERT or RoBERTa checkpoint dir.

Python use: ``from longformer.convert import make_long``.
"""
from __future__ import annotations

import argparse
import importlib

from .errors import ConversionError

# torch loads only when these are first used, so `longformer --help` stays fast.
_LAZY = {
    "make_long": "core",
    "ConversionRecord": "core",
    "RECORD_FILE": "core",
    "BERT_TO_LONGFORMER": "weights",
    "ROBERTA_TO_LONGFORMER": "weights",
    "invert": "weights",
    "bart_to_led": "bart",
    "LEDConversionRecord": "bart",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "make_long",
    "ConversionRecord",
    "ConversionError",
    "RECORD_FILE",
    "BERT_TO_LONGFORMER",
    "ROBERTA_TO_LONGFORMER",
    "invert",
    "bart_to_led",
    "LEDConversionRecord",
    "register",
]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="make a long Longformer from a BERT or RoBERTa checkpoint dir, or an LED from a BART one",
        description=(
            "Make a long Longformer from a BERT or RoBERTa checkpoint dir (config.json + model.safetensors "
            "or pytorch_model.bin), as in the Longformer paper: learned position rows repeated out to "
            "--max-length, global projections copied from the local ones, tokenizer copied with its "
            "length caps raised."
        ),
    )
    parser.add_argument("src", help="source checkpoint dir or hub id org/name[@revision] (BERT, RoBERTa or BART; "
                        "sentence-transformers dirs work)")
    parser.add_argument("dst", help="output dir (must not exist or be empty, unless --force)")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens the long model (for BART: the LED encoder) takes (default 4096; 16384 for BART)",
    )
    windows = parser.add_mutually_exclusive_group()
    windows.add_argument(
        "--attention-window",
        type=_int_list,
        default=None,
        help="Hugging Face's TWO-SIDED, even window: 512 means 256 tokens each side (default 512). "
        "One value, or comma-separated values, one per layer.",
    )
    windows.add_argument(
        "--window", type=_int_list, default=None, help="the ONE-SIDED window w instead (256 = --attention-window 512)"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty DST")
    parser.add_argument(
        "--drop-unknown",
        action="store_true",
        help="drop checkpoint keys with no Longformer counterpart (e.g. a BERT classifier head) instead of failing",
    )
    parser.set_defaults(func=_run)


def _int_list(text: str) -> int | list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _run(args: argparse.Namespace) -> int:
    from .core import make_long

    if _source_type(args.src) == "bart":
        return _run_bart(args)
    max_length = 4096 if args.max_length is None else args.max_length
    attention_window = 512 if args.attention_window is None else args.attention_window  # unused if --window
    record = make_long(
        args.src,
        args.dst,
        max_length=max_length,
        attention_window=attention_window,
        window=args.window,
        force=args.force,
        drop_unknown=args.drop_unknown,
    )
    w = sorted(set(record.window))
    print(
        f"wrote {args.dst}: {record.source_type} -> longformer, {record.source_positions} -> {record.max_length} "
        f"tokens ({record.position_rows} position rows), one-sided window {w[0] if len(w) == 1 else record.window} "
        f"(attention_window {2 * w[0] if len(w) == 1 else [2 * x for x in record.window]} in config.json)"
    )
    for key, reason in record.dropped_keys.items():
        print(f"  dropped {key}: {reason}")
    if record.tokenizer_files:
        print(f"  tokenizer files: {', '.join(record.tokenizer_files)} (length caps set to {record.max_length})")
    else:
        print("  no tokenizer files in the source dir; none copied")
    return 0


def _source_type(src: str) -> str | None:
    """model_type of SRC's config.json (SRC a dir or a hub id), or None when it has none."""
    from .._files import read_config, resolve_checkpoint

    return read_config(resolve_checkpoint(src)).get("model_type")


def _run_bart(args: argparse.Namespace) -> int:
    """BART -> LED: the encoder becomes Longformer (see convert/bart.py)."""
    from .bart import bart_to_led

    record = bart_to_led(
        args.src,
        args.dst,
        max_length=16384 if args.max_length is None else args.max_length,
        attention_window=args.attention_window if args.window is None else None,
        window=args.window,
        force=args.force,
    )
    print(
        f"wrote {args.dst}: bart -> led, encoder {record.source_positions} -> {record.max_length} tokens, "
        f"one-sided window {record.window}"
    )
    return 0
