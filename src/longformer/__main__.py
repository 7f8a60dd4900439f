"""`python -m longformer ...` (also what `torchrun -m longformer ...` runs)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
