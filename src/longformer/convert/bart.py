"""Make an LED from a BART checkpoint dir (how allenai made led-base-16384 from bart-base).

Only the encoder self-attention changes: BART's `q/k/v_proj` become Longformer's `query/key/value` and
are copied into `query_global/key_global/value_global`; `out_proj` becomes `output`. The encoder's learned
positions are repeated out to `max_length` (BART's table starts with 2 rows that are no position: its
offset; LED's has none); the decoder keeps its rows, minus the offset. On inputs shorter than BART's
table with a window covering them, the LED computes exactly what the BART did.

The position tiling is the encoder conversion's `extend_positions` (convert/weights.py), shared.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write_json, build_dir, read_config, read_json, resolve_checkpoint
from ..led.config import GENERATION_KEYS, LEDConfig
from .errors import ConversionError
from .files import check_destination, copy_tokenizer_files, load_source_weights
from .weights import extend_positions

BART_OFFSET = 2  # transformers' BartLearnedPositionalEmbedding: position p is row p + 2
RECORD_FILE = "led_conversion.json"

# BART key (after the model prefix) -> LED key; prefix rules, longest first. Encoder self-attention is the
# only renamed block; everything else has the same name in both.
ENCODER_ATTENTION = {
    "self_attn.q_proj.": "self_attn.longformer_self_attn.query.",
    "self_attn.k_proj.": "self_attn.longformer_self_attn.key.",
    "self_attn.v_proj.": "self_attn.longformer_self_attn.value.",
    "self_attn.out_proj.": "self_attn.output.",
}
GLOBAL_COPIES = {"query.": "query_global.", "key.": "key_global.", "value.": "value_global."}


@dataclass
class LEDConversionRecord:
    source: str
    source_positions: int
    max_length: int
    window: list[int]
    tokenizer_files: list[str] = field(default_factory=list)
    generation_defaults: dict[str, Any] = field(default_factory=dict)


def led_config_from_bart(bart: dict[str, Any], max_length: int, windows: list[int]) -> LEDConfig:
    """The LED config for a BART config dict (checked: plain BART, no embedding scale)."""
    if bart.get("model_type") != "bart":
        raise ConversionError(f"expected a BART config (model_type 'bart'), got model_type {bart.get('model_type')!r}")
    if bart.get("scale_embedding"):
        raise ConversionError(
            "scale_embedding=true: this BART multiplies token embeddings by sqrt(d_model) and LED does not; "
            "the converted model would not compute the same function"
        )
    if bart.get("normalize_before") or bart.get("add_final_layer_norm"):
        raise ConversionError("pre-LayerNorm BART variants (mBART-style) have no LED counterpart")
    keys = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "activation_function", "dropout",
            "attention_dropout", "activation_dropout", "init_std", "pad_token_id", "bos_token_id", "eos_token_id",
            "decoder_start_token_id", "tie_word_embeddings")
    kwargs = {k: bart[k] for k in keys if k in bart}
    extra = {k: v for k, v in bart.items() if k in GENERATION_KEYS and v is not None}
    return LEDConfig(**kwargs, max_encoder_position_embeddings=max_length,
                     max_decoder_position_embeddings=int(bart.get("max_position_embeddings", 1024)),
                     attention_window=windows, extra=extra)


def convert_bart_state_dict(state: dict[str, torch.Tensor], max_length: int) -> dict[str, torch.Tensor]:
    """BART (ForConditionalGeneration or Model) tensors -> LEDForConditionalGeneration tensors."""
    prefix = "model." if any(k.startswith("model.") for k in state) else ""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        if name in ("final_logits_bias", "lm_head.weight"):
            out[name] = tensor
            continue
        if not name.startswith(prefix) or name.startswith("classification_head.") or name.startswith("qa_outputs."):
            unknown.append(name)
            continue
        key = "led." + name[len(prefix):]
        if key.startswith("led.encoder.layers."):
            for old, new in ENCODER_ATTENTION.items():
                if f".{old}" in key:
                    key = key.replace(f".{old}", f".{new}")
                    break
        out[key] = tensor
    if unknown:
        raise ConversionError(
            f"{len(unknown)} BART keys have no LED counterpart (task heads cannot be carried over): {sorted(unknown)[:20]}"
        )
    for name in list(out):
        for local, glob in GLOBAL_COPIES.items():
            marker = f".longformer_self_attn.{local}"
            if marker in name:
                out[name.replace(marker, f".longformer_self_attn.{glob}")] = out[name].clone()
    enc, dec = "led.encoder.embed_positions.weight", "led.decoder.embed_positions.weight"
    for key in (enc, dec):
        if key not in out:
            raise ConversionError(f"the BART checkpoint has no {key.replace('led.', prefix, 1)}")
    out[enc] = extend_positions(out[enc], BART_OFFSET, max_length)[BART_OFFSET:]
    out[dec] = out[dec][BART_OFFSET:].clone()
    if "lm_head.weight" not in out and "led.shared.weight" in out:
        out["lm_head.weight"] = out["led.shared.weight"]  # a BartModel dir: the head is the tied embedding
    return out


def bart_to_led(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, max_length: int = 16384,
                attention_window: int | Sequence[int] | None = 1024, *, window: int | Sequence[int] | None = None,
                force: bool = False) -> LEDConversionRecord:
    """Write an LED dir (HF layout: loads in transformers and with LEDForConditionalGeneration.from_pretrained).

    Args:
        src_dir: BART dir (config.json with model_type bart + model.safetensors or pytorch_model.bin).
        dst_dir: output; must not exist or be empty unless ``force``.
        max_length: encoder tokens of the LED (>= BART's max_position_embeddings).
        attention_window: Hugging Face's two-sided, even window (None or 1024 = w 512, as led-base-16384),
            one value or one per encoder layer. Ignored when ``window`` (one-sided w) is given.
    Returns:
        the record, also written to ``dst_dir/led_conversion.json``.
    """
    from ..led.hub import CheckpointError, from_state_dict, save_pretrained
    from ..led.modeling import LEDForConditionalGeneration

    src, dst = resolve_checkpoint(src_dir), Path(dst_dir)
    if not (src / "config.json").is_file():
        raise ConversionError(f"no config.json in {src} (expected a Hugging Face BART checkpoint dir)")
    bart = read_config(src)
    layers = int(bart.get("encoder_layers", 12))
    windows = _one_sided(attention_window, window, layers)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConversionError(f"max_length must be a positive int, got {max_length!r}")
    check_destination(dst, force)
    config = led_config_from_bart(bart, max_length, windows)
    state, _ = load_source_weights(src)
    try:
        model = from_state_dict(convert_bart_state_dict(state, max_length), config, LEDForConditionalGeneration)
    except CheckpointError as err:
        raise ConversionError(f"{src}: {err}") from None
    gen_path = src / "generation_config.json"
    keep = set(GENERATION_KEYS) | {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"}
    model.generation_defaults = (
        {k: v for k, v in read_json(gen_path).items() if k in keep and v is not None} if gen_path.is_file() else {}
    )

    def build(tmp: Path) -> LEDConversionRecord:
        save_pretrained(model, tmp)
        record = LEDConversionRecord(
            source=str(src.resolve()), source_positions=int(bart.get("max_position_embeddings", 1024)),
            max_length=max_length, window=windows, tokenizer_files=copy_tokenizer_files(src, tmp, max_length),
            generation_defaults=model.generation_defaults or dict(config.extra),
        )
        atomic_write_json(tmp / RECORD_FILE, asdict(record))
        return record

    return build_dir(dst, build)


def _one_sided(attention_window: int | Sequence[int] | None, window: int | Sequence[int] | None,
               layers: int) -> list[int]:
    if window is not None:
        values = [window] * layers if isinstance(window, int) else list(window)
    else:
        if attention_window is None:
            attention_window = 1024  # led-base-16384's two-sided window
        hf = [attention_window] * layers if isinstance(attention_window, int) else list(attention_window)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 or v % 2 for v in hf):
            raise ConversionError(f"attention_window is two-sided and must be even ints >= 0, got {attention_window!r}")
        values = [v // 2 for v in hf]
    if len(values) != layers or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ConversionError(f"need one window >= 0 or one per encoder layer ({layers}), got {values!r}")
    return values
