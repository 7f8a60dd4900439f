"""Data for character-level language modelling: enwik8 / text8 (downloaded, checked, cached) or any file.

Files are memory-mapped (numpy.memmap), never read whole into memory: a training batch copies only
its own windows. Splits follow the standard enwik8/text8 convention, first 90% train, next 5% valid,
last 5% test (exactly 90M/5M/5M for the 100M-symbol canonical files).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._files import cache_root
from .config import LMError

SPLITS = ("train", "valid", "test")
TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"  # symbol 0 is the space


@dataclass(frozen=True)
class Archive:
    """A canonical corpus: a zip holding one member file.

    The member's size and SHA-1 are the values published by the corpus author (enwik8, Large Text
    Compression Benchmark) or widely mirrored (text8). ``zip_sha256`` pins the archive itself when
    known; when it is None the archive is still checked through its member.
    """

    url: str
    member: str
    size: int
    member_sha1: str
    vocab: str
    zip_sha256: str | None = None


ARCHIVES = {
    "enwik8": Archive("http://mattmahoney.net/dc/enwik8.zip", "enwik8", 100_000_000,
                      "57b8363b814821dc9d47aa4d41f58733519076b2", "bytes"),
    "text8": Archive("http://mattmahoney.net/dc/text8.zip", "text8", 100_000_000,
                     "0dc3edebc970dcc96137e7deda4d9995af9d93de", "text8"),
}


def default_cache_dir() -> Path:
    return cache_root() / "lm"


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_archive(name: str, cache_dir: Path | None = None, archive: Archive | None = None) -> Path:
    """Path of the extracted, verified corpus file, downloading and unpacking it on first use.

    ``archive`` overrides the built-in entry (tests point it at a file:// URL). Every step writes a
    temporary file and renames it, so an interrupted download never leaves a file that looks done.
    """
    if archive is None:
        if name not in ARCHIVES:
            raise ValueError(f"dataset name must be one of {sorted(ARCHIVES)}, got {name!r}")
        archive = ARCHIVES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / archive.member
    if target.is_file() and target.stat().st_size == archive.size:
        return target  # verified when it was written; re-hashing 100 MB per run is wasted time
    zip_path = cache / f"{archive.member}.zip"
    if not zip_path.is_file():
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".part")
        os.close(fd)
        try:
            try:
                with urllib.request.urlopen(archive.url) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise OSError(f"could not download {archive.url} ({err}); download and unzip it yourself and "
                              f"pass the file as --data PATH") from err
            if archive.zip_sha256 is not None and (got := file_digest(Path(tmp), "sha256")) != archive.zip_sha256:
                raise ValueError(f"checksum mismatch for {archive.url}: sha256 {got}, expected {archive.zip_sha256}")
            os.replace(tmp, zip_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".part")
    os.close(fd)
    try:
        with zipfile.ZipFile(zip_path) as zf, zf.open(archive.member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        size = os.path.getsize(tmp)
        sha1 = file_digest(Path(tmp), "sha1")
        if size != archive.size or sha1 != archive.member_sha1:
            zip_path.unlink()  # a wrong or corrupt archive: the next call downloads it again
            raise ValueError(
                f"{archive.url}: member {archive.member!r} has {size} bytes, sha1 {sha1}; expected "
                f"{archive.size} bytes, sha1 {archive.member_sha1}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve_data(data: str, cache_dir: Path | None = None) -> tuple[Path, str | None]:
    """``data`` is "enwik8", "text8" (downloaded) or a path. Returns (path, vocab implied or None)."""
    if data in ARCHIVES and not Path(data).exists():
        return fetch_archive(data, cache_dir), ARCHIVES[data].vocab
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"--data: {data!r} is neither an existing file nor one of {sorted(ARCHIVES)}")
    if path.stat().st_size == 0:
        raise LMError(f"--data: {path} is empty (0 bytes); pass a text file to model")
    return path, None


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """[start, end) of each split for n symbols: 90% / 5% / 5% (90M/5M/5M at n = 1e8)."""
    n_train, n_valid = n * 90 // 100, n * 5 // 100
    return {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, n)}


def _text8_table() -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)  # 255 marks a byte outside the alphabet
    for i, ch in enumerate(TEXT8_ALPHABET):
        table[ord(ch)] = i
    return table


class SymbolStream:
    """One split of a corpus file as symbols, memory-mapped.

    vocab "bytes": symbol = byte (256). vocab "text8": symbol = index in " a..z" (27); the file
    must hold only those characters (checked once, in 16 MB chunks, when the stream is opened).
    """

    def __init__(self, path: str | Path, split: str, vocab: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if vocab not in ("bytes", "text8"):
            raise ValueError(f"vocab must be 'bytes' or 'text8', got {vocab!r}")
        self.path, self.split, self.vocab = Path(path), split, vocab
        if not self.path.is_file():
            raise FileNotFoundError(f"data file {self.path} does not exist")
        if self.path.stat().st_size == 0:  # numpy cannot map an empty file
            raise LMError(f"data file {self.path} is empty (0 bytes); pass a text file to model")
        raw = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = split_bounds(len(raw))[split]
        self.data = raw[start:end]  # a view of the map: nothing is read until a batch asks for it
        self.table = _text8_table() if vocab == "text8" else None
        if self.table is not None:
            for i in range(0, len(self.data), 1 << 24):
                bad = self.table[self.data[i:i + (1 << 24)]] == 255
                if bad.any():
                    pos = i + int(np.argmax(bad))
                    raise LMError(f"{self.path} is not text8 text: byte {int(self.data[pos])!r} at offset "
                                     f"{pos} of the {split} split is not a-z or space (use --vocab bytes)")

    def __len__(self) -> int:
        return len(self.data)

    def get(self, start: int, end: int) -> np.ndarray:
        """Symbols [start, end) of the split as int64."""
        chunk = np.asarray(self.data[start:end])
        if self.table is not None:
            chunk = self.table[chunk]
        return chunk.astype(np.int64)

    def random_batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64, from uniformly random offsets."""
        if len(self) < seq_len + 1:
            raise LMError(f"the {self.split} split of {self.path} has {len(self)} symbols, fewer than seq_len + 1 = "
                          f"{seq_len + 1}; use a longer file (the splits are 90/5/5%) or a shorter sequence")
        starts = torch.randint(0, len(self) - seq_len, (batch_size,), generator=generator).tolist()
        rows = np.stack([self.get(s, s + seq_len + 1) for s in starts])
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]


def decode(symbols: list[int], vocab: str) -> str:
    if vocab == "text8":
        return "".join(TEXT8_ALPHABET[s] for s in symbols)
    return bytes(symbols).decode("utf-8", errors="replace")


def encode(text: str, vocab: str) -> list[int]:
    if vocab == "text8":
        bad = sorted({ch for ch in text if ch not in TEXT8_ALPHABET})
        if bad:
            raise LMError(f"prompt has characters outside text8's a-z and space: {bad[:10]}")
        return [TEXT8_ALPHABET.index(ch) for ch in text]
    return list(text.encode("utf-8"))
