"""`python -m longformer.finetune {finetune,predict,export-hyperpartisan} ...`: this package's commands alone
(the same parsers `longformer` registers), e.g. for `torchrun -m longformer.finetune finetune ...`."""
from __future__ import annotations

import argparse

from .cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longformer.finetune")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
