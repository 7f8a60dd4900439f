"""Fixtures of the pretrain-mlm tests; the builders are in pretrain_helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from pretrain_helpers import build_model_dir, corpus, write_jsonl


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    return write_jsonl(root / "train.jsonl", corpus(40, seed=1)), write_jsonl(root / "valid.jsonl", corpus(8, seed=2))


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
