"""Fixtures for the LM tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from lm_helpers import synthetic_text


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(synthetic_text(40_000))
    return path
