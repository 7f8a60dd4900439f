"""`LEDConfig`: the Longformer-Encoder-Decoder's hyper-parameters, and reading/writing HF config.json.

`attention_window` here is ALWAYS the one-sided w per encoder layer. Hugging Face's LED config.json stores
the two-sided even size (1024 there = 512 here); the conversion happens only in `from_dict`/`to_hf_dict`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import atomic_write_json, read_config, require_fields
from ..attention.layout import one_sided_from_hf, per_layer_dilations, per_layer_windows
from ..linear import ACTIVATIONS


# Fields an LED config.json must carry (transformers always writes them): the weights' shapes follow.
SHAPE_FIELDS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_encoder_position_embeddings",
                "max_decoder_position_embeddings")
# Keys of a Hugging Face config.json that belong to generation, not to the model (transformers 5 refuses
# to save a model config holding them). We read them as generation defaults and save them in
# generation_config.json instead.
GENERATION_KEYS = (
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "temperature", "top_k", "top_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "num_return_sequences",
    "forced_bos_token_id", "forced_eos_token_id", "max_new_tokens", "min_new_tokens",
)

# transformers' generation settings this module does not implement, with their no-op values. A checkpoint
# that sets one of them to anything else would generate differently there, so generate() refuses it.
UNSUPPORTED_GENERATION: dict[str, Any] = {
    "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0, "bad_words_ids": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "remove_invalid_values": False, "num_beam_groups": 1, "diversity_penalty": 0.0,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "top_h": None,
    "guidance_scale": None, "sequence_bias": None, "max_time": None, "stop_strings": None,
    "force_words_ids": None, "constraints": None, "penalty_alpha": None,
}


@dataclass
class LEDConfig:
    """Hyper-parameters of an LED (defaults: the shape of allenai/led-base-16384).

    attention_window: one-sided window w per encoder layer (an int is broadcast). Any w >= 0 per layer:
        unlike transformers there is no padding to a common multiple, so windows need not divide each other.
    attention_dilation: per encoder layer, an int (every head) or a list of one int per head.
    max_encoder_position_embeddings / max_decoder_position_embeddings: rows of the learned position
        tables. LED positions start at 0 (no offset, unlike BART's 2), so these are also the longest inputs.
    extra: other keys of the source config.json (id2label, task_specific_params...), kept for round trips.
    """

    vocab_size: int = 50265
    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 12
    decoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_ffn_dim: int = 3072
    max_encoder_position_embeddings: int = 16384
    max_decoder_position_embeddings: int = 1024
    attention_window: list[int] | int = 512
    attention_dilation: list[int | list[int]] | int = 1
    activation_function: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = 2
    tie_word_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                     "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
                     "max_encoder_position_embeddings", "max_decoder_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LEDConfig.{name} must be a positive int, got {value!r}")
        for heads_name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, heads_name) != 0:
                raise ValueError(
                    f"d_model ({self.d_model}) must be a multiple of {heads_name} ({getattr(self, heads_name)})"
                )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {sorted(ACTIVATIONS)}, got {self.activation_function!r}")
        for name in ("pad_token_id", "decoder_start_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"LEDConfig.{name} must be an int in [0, vocab_size={self.vocab_size}), got {value!r}")
        self.attention_window = self._per_layer_windows(self.attention_window)
        self.attention_dilation = self._per_layer_dilations(self.attention_dilation)

    def _per_layer_windows(self, windows: Any) -> list[int]:
        return per_layer_windows(windows, self.encoder_layers, "encoder_layers")

    def _per_layer_dilations(self, dilations: Any) -> list[int | list[int]]:
        return per_layer_dilations(dilations, self.encoder_layers, self.encoder_attention_heads, "encoder_layers", "encoder_attention_heads")

    @property
    def eos_token_ids(self) -> list[int]:
        """eos_token_id as a list (config.json may hold an int, a list or null)."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    # ---------------------------------------------------------------- Hugging Face config.json
    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> LEDConfig:
        """Read a Hugging Face LED config dict (model_type "led", two-sided even `attention_window`)."""
        model_type = d.get("model_type", "led")
        if model_type != "led":
            hint = " Convert it first: `longformer convert` (longformer.convert.bart_to_led)." if model_type == "bart" else ""
            raise ValueError(f"unsupported model_type {model_type!r}: expected 'led'.{hint}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "attention_window", "attention_dilation"}
        kwargs: dict[str, Any] = {k: d[k] for k in names if k in d}
        hf_window = d.get("attention_window", 1024)
        kwargs["attention_window"] = one_sided_from_hf(hf_window)
        if "attention_dilation" in d:  # our extension; transformers has no dilation
            kwargs["attention_dilation"] = d["attention_dilation"]
        skip = names | {"attention_window", "attention_dilation", "model_type", "num_hidden_layers",
                        "transformers_version", "_name_or_path"}
        kwargs["extra"] = {k: v for k, v in d.items() if k not in skip}
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that transformers' LEDConfig reads (two-sided `attention_window`)."""
        d: dict[str, Any] = {k: v for k, v in self.extra.items()
                             if k not in GENERATION_KEYS and k not in UNSUPPORTED_GENERATION}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "attention_dilation")})
        d["attention_window"] = [2 * w for w in self.attention_window]
        if any(r != 1 for r in self.attention_dilation):
            d["attention_dilation"] = self.attention_dilation  # transformers ignores it (and cannot run it)
        d["model_type"] = "led"
        d["architectures"] = d.get("architectures") or ["LEDForConditionalGeneration"]
        d["is_encoder_decoder"] = True
        d["num_hidden_layers"] = self.encoder_layers
        return d

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> LEDConfig:
        """Read a config.json (the file or its directory); the fields the weights' shapes follow from
        must be there (a default would build a model the checkpoint does not fit)."""
        path = Path(path)
        return cls.from_file_dict(read_config(path), path / "config.json" if path.is_dir() else path, **overrides)

    @classmethod
    def from_file_dict(cls, d: dict[str, Any], where: str | os.PathLike, **overrides: Any) -> LEDConfig:
        """`from_dict` for a dict read from the file ``where``, whose shape fields must all be there."""
        if d.get("model_type", "led") == "led":  # other types get from_dict's pointed error
            require_fields(d, SHAPE_FIELDS, where)
        return cls.from_dict(d, **overrides)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/config.json` atomically."""
        path = Path(directory) / "config.json"
        atomic_write_json(path, self.to_hf_dict())
        return path
