"""`python -m longformer.finetune {finetune,predict,export-hyperpartisan,finetune-summary} ...`, e.g. for
`torchrun -m longformer.finetune finetune ...`: the same commands as `longformer COMMAND`, run through
the one command-line entry point (so errors print as one `error:` line with exit code 2 there too)."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from longformer.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
