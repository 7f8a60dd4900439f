"""Per-layer attention settings of a model config: one-sided windows and (per-head) dilations.

Shared by every config that holds Longformer layers (encoder, LED encoder) so that they accept and
reject the same values with the same messages.
"""
from __future__ import annotations

from typing import Any


def per_layer_windows(windows: Any, num_layers: int, layers_name: str) -> list[int]:
    """An int (broadcast) or one one-sided window w >= 0 per layer -> a list of num_layers ints."""
    if isinstance(windows, int) and not isinstance(windows, bool):
        windows = [windows] * num_layers
    if not isinstance(windows, (list, tuple)) or len(windows) != num_layers:
        raise ValueError(
            f"attention_window must be an int or a list of {layers_name}={num_layers} one-sided windows, "
            f"got {windows!r}"
        )
    for w in windows:
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"attention_window values must be ints >= 0 (one-sided w), got {windows!r}")
    return list(windows)


def per_layer_dilations(
    dilations: Any, num_layers: int, num_heads: int, layers_name: str, heads_name: str
) -> list[int | list[int]]:
    """An int (broadcast) or, per layer, an int or num_heads ints >= 1 -> a list of num_layers entries."""
    if isinstance(dilations, int) and not isinstance(dilations, bool):
        dilations = [dilations] * num_layers
    if not isinstance(dilations, (list, tuple)) or len(dilations) != num_layers:
        raise ValueError(
            f"attention_dilation must be an int or a list of {layers_name}={num_layers} entries, got {dilations!r}"
        )
    out: list[int | list[int]] = []
    for d in dilations:
        values = [d] if isinstance(d, int) and not isinstance(d, bool) else d
        if isinstance(d, (list, tuple)) and len(d) != num_heads:
            raise ValueError(
                f"a per-head attention_dilation entry needs {heads_name}={num_heads} values, got {list(d)!r}"
            )
        if not isinstance(values, (list, tuple)) or any(
            isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in values
        ):
            raise ValueError(f"attention_dilation values must be ints >= 1, got {dilations!r}")
        out.append(d if isinstance(d, int) else list(d))
    return out


def one_sided_from_hf(hf_window: Any) -> int | list[int]:
    """Hugging Face's two-sided, even ``attention_window`` (an int or a list) -> the one-sided w here."""
    values = [hf_window] if isinstance(hf_window, int) and not isinstance(hf_window, bool) else hf_window
    if not isinstance(values, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 or v % 2 for v in values
    ):
        raise ValueError(
            "config.json attention_window is Hugging Face's two-sided size: it must be an even int >= 0 or a "
            f"list of them, got {hf_window!r}"
        )
    return values[0] // 2 if isinstance(hf_window, int) else [v // 2 for v in values]
