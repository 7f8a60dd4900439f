"""The errors a user can fix. Every `longformer` command prints one of these as a single
``longformer CMD: error: ...`` line and exits with code 2 (see cli.py); anything else is a bug and
keeps its traceback. Each layer's own error class (DataError, ConversionError, ...) derives from
`LongformerError`, so the CLI needs no list of them.
"""
from __future__ import annotations


class LongformerError(Exception):
    """A mistake in what the user gave (a path, a file, an argument): the message says what to do."""


class CheckpointFileError(LongformerError, ValueError):
    """A checkpoint file or directory that is missing, corrupt, truncated or incomplete.

    Also a ValueError, as the loaders raised before this class existed.
    """


class ResumeError(LongformerError):
    """`--resume` of a run whose stored arguments differ from the new ones, or that cannot go on."""
