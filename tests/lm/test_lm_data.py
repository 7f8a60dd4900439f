from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from longformer.lm.data import (ARCHIVES, Archive, SymbolStream, decode, encode, fetch_archive, resolve_data,
                                split_bounds)


def test_standard_splits():
    assert split_bounds(100_000_000) == {"train": (0, 90_000_000), "valid": (90_000_000, 95_000_000),
                                         "test": (95_000_000, 100_000_000)}
    b = split_bounds(4_154_064)  # the enwik8 prefix
    assert b["train"][1] == 3_738_657 and b["test"][1] == 4_154_064
    assert b["valid"][1] - b["valid"][0] == 4_154_064 * 5 // 100


def test_stream_is_memory_mapped_and_split(tmp_path: Path):
    path = tmp_path / "bytes.bin"
    data = np.arange(1000, dtype=np.int64) % 251
    path.write_bytes(data.astype(np.uint8).tobytes())
    streams = {s: SymbolStream(path, s, "bytes") for s in ("train", "valid", "test")}
    assert isinstance(streams["train"].data, np.memmap)  # a view of the file, not a copy in memory
    assert [len(streams[s]) for s in ("train", "valid", "test")] == [900, 50, 50]
    np.testing.assert_array_equal(streams["test"].get(0, 50), data[950:])
    x, y = streams["train"].random_batch(6, 17, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (6, 17) and x.dtype == torch.long
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    assert bool(((y - x) % 251 == 1).all())  # consecutive file symbols


def test_random_batches_are_reproducible(tmp_path: Path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(256)) * 10)
    s = SymbolStream(path, "train", "bytes")
    a = s.random_batch(4, 9, torch.Generator().manual_seed(3))
    b = s.random_batch(4, 9, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="fewer than seq_len"):
        s.random_batch(1, 10_000, torch.Generator())


def test_text8_vocab(tmp_path: Path):
    path = tmp_path / "text8"
    path.write_text("anarchism originated as a term " * 40)
    s = SymbolStream(path, "train", "text8")
    assert decode(s.get(0, 9).tolist(), "text8") == "anarchism"
    assert int(s.get(0, len(s)).max()) <= 26
    assert encode("a z", "text8") == [1, 0, 26]
    bad = tmp_path / "bad"
    bad.write_text("Hello, world " * 10)
    with pytest.raises(ValueError, match="not text8 text"):
        SymbolStream(bad, "train", "text8")
    with pytest.raises(ValueError, match="outside text8"):
        encode("Hi", "text8")


def _make_zip(tmp_path: Path, member: str, payload: bytes) -> tuple[Path, str, str]:
    zpath = tmp_path / "src" / f"{member}.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, payload)
    return zpath, hashlib.sha256(zpath.read_bytes()).hexdigest(), hashlib.sha1(payload).hexdigest()


def test_fetch_archive_downloads_checks_and_caches(tmp_path: Path):
    payload = b"<mediawiki> some text </mediawiki>" * 100
    zpath, zsha256, sha1 = _make_zip(tmp_path, "enwik8", payload)
    archive = Archive(zpath.as_uri(), "enwik8", len(payload), sha1, "bytes", zip_sha256=zsha256)
    cache = tmp_path / "cache"
    got = fetch_archive("enwik8", cache, archive)
    assert got == cache / "enwik8" and got.read_bytes() == payload
    zpath.unlink()  # second call must use the cache, not the network
    assert fetch_archive("enwik8", cache, archive) == got


def test_fetch_archive_rejects_bad_checksums(tmp_path: Path):
    payload = b"abc" * 100
    zpath, zsha256, sha1 = _make_zip(tmp_path, "text8", payload)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch"):
        fetch_archive("text8", cache, Archive(zpath.as_uri(), "text8", len(payload), sha1, "text8", zip_sha256="0" * 64))
    assert not any(cache.iterdir())  # nothing half-written is left behind
    with pytest.raises(ValueError, match="expected 300 bytes, sha1 " + "f" * 40):
        fetch_archive("text8", cache, Archive(zpath.as_uri(), "text8", len(payload), "f" * 40, "text8"))
    assert not any(cache.iterdir())  # the wrong archive is removed so that a retry downloads again


def test_canonical_archives_and_resolve(tmp_path: Path):
    assert ARCHIVES["enwik8"].size == ARCHIVES["text8"].size == 100_000_000
    assert ARCHIVES["text8"].vocab == "text8" and ARCHIVES["enwik8"].vocab == "bytes"
    f = tmp_path / "x.txt"
    f.write_text("hello")
    assert resolve_data(str(f)) == (f, None)
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        resolve_data(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="dataset name must be"):
        fetch_archive("wikitext", tmp_path)


def test_dataset_name_uses_the_cache_without_network(tmp_path: Path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / "text8", "wb") as f:  # a sparse file of the canonical size: no disk, no download
        f.truncate(ARCHIVES["text8"].size)
    path, vocab = resolve_data("text8", cache)
    assert path == cache / "text8" and vocab == "text8"


def test_failed_download_says_what_to_do(tmp_path: Path):
    archive = Archive((tmp_path / "absent.zip").as_uri(), "enwik8", 10, "0" * 40, "bytes")
    with pytest.raises(OSError, match="could not download .* --data PATH"):
        fetch_archive("enwik8", tmp_path / "cache", archive)
    assert not any((tmp_path / "cache").iterdir())
