"""Fixtures for the LED tests (helpers live in led_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from led_helpers import hf_led


@pytest.fixture
def hf_led_dir(tmp_path: Path):
    """(transformers model, its saved dir)."""
    model = hf_led()
    path = tmp_path / "hf-led"
    model.save_pretrained(path)
    return model, path
