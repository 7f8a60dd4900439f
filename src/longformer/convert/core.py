"""`make_long`: a BERT or RoBERTa checkpoint dir in, a Longformer checkpoint dir out (atomically)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._files import atomic_write_json, build_dir, resolve_checkpoint, save_safetensors
from .errors import ConversionError
from .files import (SUPPORTED_TYPES, check_destination, copy_tokenizer_files, load_source_weights, longformer_config,
                    read_source_config, sep_token_id)
from .weights import convert_state_dict

# Written beside the weights so a reader (and the demo's cache check) knows where the dir came from.
RECORD_FILE = "longformer_conversion.json"


@dataclass
class ConversionRecord:
    """What `make_long` did, as saved in ``longformer_conversion.json``."""

    source: str
    source_type: str
    source_weights: str
    source_positions: int
    max_length: int
    window: list[int]
    position_rows: int
    dropped_keys: dict[str, str] = field(default_factory=dict)
    tokenizer_files: list[str] = field(default_factory=list)


def make_long(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    max_length: int = 4096,
    attention_window: int | Sequence[int] | None = 512,
    *,
    window: int | Sequence[int] | None = None,
    force: bool = False,
    drop_unknown: bool = False,
) -> ConversionRecord:
    """Make a long Longformer from a short BERT or RoBERTa checkpoint dir (allenai's recipe).

    Args:
        src_dir: Hugging Face dir with config.json (model_type bert or roberta) and
            model.safetensors (or a sharded index, or pytorch_model.bin); tokenizer files optional.
            A sentence-transformers dir (like all-MiniLM-L6-v2) is a plain BERT dir.
        dst_dir: output dir; must not exist or be empty unless ``force``.
        max_length: tokens the long model takes (>= the source's). RoBERTa gets
            ``max_length + 2`` position rows (rows 0 and 1 belong to padding), BERT ``max_length``.
        attention_window: Hugging Face's two-sided, even window (512 means w = 256), one value or
            one per layer. Ignored when ``window`` is given.
        window: the one-sided w (>= 0), one value or one per layer (this library's convention).
        force: replace a non-empty ``dst_dir``.
        drop_unknown: drop checkpoint keys with no Longformer counterpart (e.g. a BERT classifier
            head) instead of raising; they are listed in the record.

    Returns:
        The ConversionRecord also written to ``dst_dir/longformer_conversion.json``.

    The output holds config.json (model_type longformer), model.safetensors with Hugging Face
    Longformer key names, the record and the tokenizer files with their length caps raised.
    """
    src, dst = resolve_checkpoint(src_dir), Path(dst_dir)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConversionError(f"max_length must be a positive int, got {max_length!r}")
    check_destination(dst, force)
    source = read_source_config(src)
    source_type = SUPPORTED_TYPES[source["model_type"]]  # "bert" or "roberta" family
    layers = int(source["num_hidden_layers"])
    windows = _one_sided_windows(attention_window, window, layers)
    # transformers' RoBERTa counts positions from padding_idx + 1 (= 2); BERT from 0.
    offset = int(source.get("pad_token_id", 1)) + 1 if source_type == "roberta" else 0
    source_positions = int(source["max_position_embeddings"]) - offset

    state, weights_name = load_source_weights(src)
    state, dropped = convert_state_dict(state, source_type, max_length, offset, drop_unknown)
    has_lm_head = any(k.startswith("lm_head.") for k in state)
    config = longformer_config(source, max_length, windows, has_lm_head, sep_token_id(src))

    def build(tmp: Path) -> ConversionRecord:
        save_safetensors(tmp / "model.safetensors", {k: v.contiguous() for k, v in state.items()})
        state.clear()  # the check below builds the model; do not hold two copies of the weights
        atomic_write_json(tmp / "config.json", config)
        record = ConversionRecord(
            source=str(src.resolve()),
            source_type=source_type,
            source_weights=weights_name,
            source_positions=source_positions,
            max_length=max_length,
            window=windows,
            position_rows=max_length + offset,
            dropped_keys=dropped,
            tokenizer_files=copy_tokenizer_files(src, tmp, max_length),
        )
        atomic_write_json(tmp / RECORD_FILE, asdict(record))
        _check_loads(tmp, has_lm_head)
        return record

    return build_dir(dst, build)


def _check_loads(path: Path, has_lm_head: bool) -> None:
    """Load the written dir with our model class before publishing it: every key must be present,
    expected and of the right shape (the loader lists any that are not), so a converted dir never
    loads with silently initialised weights."""
    from ..encoder import LongformerForMaskedLM, LongformerModel

    cls = LongformerForMaskedLM if has_lm_head else LongformerModel
    try:
        cls.from_pretrained(path)
    except ValueError as err:
        raise ConversionError(f"the converted checkpoint does not load as {cls.__name__}: {err}") from None


def _one_sided_windows(
    attention_window: int | Sequence[int] | None, window: int | Sequence[int] | None, layers: int
) -> list[int]:
    """Per-layer one-sided windows from either the HF two-sided value(s) or one-sided value(s)."""
    if window is not None:
        values, name = window, "window"
    elif attention_window is not None:
        values, name = attention_window, "attention_window"
    else:
        raise ConversionError("give attention_window (two-sided, Hugging Face) or window (one-sided)")
    values = [values] * layers if isinstance(values, int) else list(values)
    if len(values) != layers:
        raise ConversionError(f"{name} must be one int or {layers} ints (one per layer), got {len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConversionError(f"{name} values must be ints >= 0, got {values}")
        if name == "attention_window" and (v % 2 or v == 0):
            raise ConversionError(
                f"attention_window is Hugging Face's two-sided window and must be even and > 0 "
                f"(512 means w = 256 each side), got {v}; use window= for the one-sided value"
            )
    return [v // 2 for v in values] if name == "attention_window" else values
