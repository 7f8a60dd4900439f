"""Atomic file writes: a crash or a kill never leaves half a file where a whole one is expected."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where longformer keeps what it makes once and reuses (converted models, compiled kernels,
    datasets): ``explicit``, else $LONGFORMER_CACHE, else $XDG_CACHE_HOME/longformer, else
    ~/.cache/longformer."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("LONGFORMER_CACHE"):
        return Path(os.environ["LONGFORMER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "longformer"
