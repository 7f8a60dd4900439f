"""Encoder tests: keep the known dropout warning out of the output."""
from __future__ import annotations

import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_transformers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="attention-probability dropout")
        yield
