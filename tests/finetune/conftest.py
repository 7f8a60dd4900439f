"""Fixtures of the fine-tuning tests; the builders are in finetune_helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from finetune_helpers import build_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP threads that spin
    waiting for each other make a 10 ms step take seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
