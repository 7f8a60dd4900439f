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


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: a second OpenMP thread only adds spin-waiting, which on the shared
    2-core machine made the tests 4x slower. The setting is restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
