"""`LongformerConfig`: the encoder's hyper-parameters, and reading/writing Hugging Face config.json.

`attention_window` here is ALWAYS the one-sided w per layer. Hugging Face's config.json stores the
two-sided even size (512 there = 256 here); the conversion happens only in `from_dict`/`to_hf_dict`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .._files import atomic_write_json, read_config, require_fields
from ..errors import CheckpointFileError
from ..attention.layout import one_sided_from_hf, per_layer_dilations, per_layer_windows
from ..linear import ACTIVATIONS

POSITION_STYLES = ("roberta", "bert")
# Shapes of the released checkpoints (paper Table 8 sizes), for `LongformerConfig.from_name`.
PRESETS: dict[str, dict[str, Any]] = {
    "longformer-base-4096": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, attention_window=256),
    "longformer-large-4096": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  intermediate_size=4096, attention_window=256),
}
# transformers' LongformerConfig defaults: what a config.json that omits a key means (ours differ).
HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0,
    eos_token_id=2, sep_token_id=2, attention_window=512, tie_word_embeddings=True, num_labels=2,
)
# Fields config.json must carry (transformers always writes them): the weights' shapes follow from them.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")
# Source model types `from_source_config` knows how to make long (roberta-style position offsets or not).
SOURCE_MODEL_TYPES = {"roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta", "bert": "bert"}


@dataclass
class LongformerConfig:
    """Hyper-parameters of a Longformer encoder (defaults: the shape of allenai/longformer-base-4096).

    attention_window: one-sided window w per layer (an int is broadcast to every layer).
    attention_dilation: per layer, an int (every head) or a list of one int per head.
    position_embedding_style: "roberta" (position ids start at pad_token_id + 1 and padding tokens take
        position pad_token_id, as transformers' create_position_ids_from_input_ids) or "bert" (0, 1, 2...).
    """

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 4098
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    sep_token_id: int | None = 2
    attention_window: list[int] | int = 256
    attention_dilation: list[int | list[int]] | int = 1
    position_embedding_style: str = "roberta"
    tie_word_embeddings: bool = True
    # Task heads.
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    architectures: list[str] | None = field(default=None, compare=False)
    model_type: ClassVar[str] = "longformer"  # what transformers and PEFT look up on a config

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LongformerConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.position_embedding_style not in POSITION_STYLES:
            raise ValueError(
                f"position_embedding_style must be one of {POSITION_STYLES}, got {self.position_embedding_style!r}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_token_id}")
        self.attention_window = self._per_layer_windows(self.attention_window)
        self.attention_dilation = self._per_layer_dilations(self.attention_dilation)
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if sorted(self.id2label) != list(range(self.num_labels)):
                raise ValueError(
                    f"id2label must name labels 0..num_labels-1 (num_labels={self.num_labels}), got {self.id2label}"
                )
            if self.id2label == _default_labels(self.num_labels):
                self.id2label = None  # the generic names carry no information: keep configs comparable
        if self.max_length < 1:
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} leaves no room for tokens with "
                f"{self.position_embedding_style}-style positions (pad_token_id={self.pad_token_id})"
            )

    def _per_layer_windows(self, windows: Any) -> list[int]:
        return per_layer_windows(windows, self.num_hidden_layers, "num_hidden_layers")

    def _per_layer_dilations(self, dilations: Any) -> list[int | list[int]]:
        return per_layer_dilations(dilations, self.num_hidden_layers, self.num_attention_heads, "num_hidden_layers", "num_attention_heads")

    @property
    def max_length(self) -> int:
        """Longest input (tokens) the position table can hold."""
        if self.position_embedding_style == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> LongformerConfig:
        """A preset shape (see PRESETS), e.g. from_name("longformer-base-4096", num_hidden_layers=2)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ---------------------------------------------------------------- Hugging Face config.json
    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> LongformerConfig:
        """Read a Hugging Face style config dict with model_type "longformer" (two-sided attention_window)."""
        model_type = d.get("model_type", "longformer")
        if model_type != "longformer":
            hint = (
                " Make it long first: `longformer convert SRC DST` (or LongformerConfig.from_source_config)."
                if model_type in SOURCE_MODEL_TYPES
                else ""
            )
            raise ValueError(f"unsupported model_type {model_type!r}: expected 'longformer'.{hint}")
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {**HF_DEFAULTS, **d}  # a key the file omits means what it means to transformers
        kwargs = {k: v for k, v in d.items() if k in fields}
        kwargs["attention_window"] = one_sided_from_hf(d["attention_window"])
        if kwargs.get("pad_token_id") is None:
            raise ValueError("config.json has pad_token_id null: roberta-style positions need a padding id")
        if kwargs.get("id2label") is not None:
            if "num_labels" in overrides and "id2label" not in overrides:
                # A new head size: the checkpoint's label names describe the old head.
                if len(kwargs["id2label"]) != overrides["num_labels"]:
                    del kwargs["id2label"]
            else:
                kwargs["num_labels"] = len(kwargs["id2label"])
        if isinstance(kwargs.get("eos_token_id"), list):  # transformers allows several; the first is the separator
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        unknown = set(overrides) - fields
        if unknown:
            raise TypeError(f"unknown LongformerConfig fields in overrides: {sorted(unknown)}")
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> LongformerConfig:
        """Read config.json (a file, or a directory holding one). The fields the weights' shapes depend
        on must be in the file: a default there would build a model the checkpoint does not fit."""
        path = Path(path)
        if path.is_dir() and not (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            raise CheckpointFileError(
                f"no config.json in {path}, only weights: transformers.Trainer saves only the weights of a model "
                "that is not a PreTrainedModel (ours are one when built after transformers is imported); build the "
                "model after `import transformers`, pass callbacks=[longformer.interop.SaveConfigCallback()] to "
                "the Trainer, or call model.save_pretrained")
        d = read_config(path)
        if d.get("model_type", "longformer") == "longformer":  # other types get from_dict's pointed error
            require_fields(d, SHAPE_FIELDS, path / "config.json" if path.is_dir() else path)
        return cls.from_dict(d, **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict transformers' LongformerConfig reads (two-sided windows: 2 * w).

        `attention_dilation` and `position_embedding_style` are written as extra keys; transformers
        ignores them (its Longformer has neither), so a model using them differs there.
        """
        d = dataclasses.asdict(self)
        d["attention_window"] = [2 * w for w in self.attention_window]
        d["model_type"] = "longformer"
        labels = self.id2label if self.id2label is not None else _default_labels(self.num_labels)
        d["id2label"] = {str(k): v for k, v in labels.items()}
        d["label2id"] = {v: int(k) for k, v in d["id2label"].items()}
        if d["architectures"] is None:
            del d["architectures"]
        return d

    def to_dict(self) -> dict[str, Any]:
        """transformers' name for the config as a dict (PEFT reads `model_type` from it): `to_hf_dict()`."""
        return self.to_hf_dict()

    def to_json(self, path: str | os.PathLike) -> None:
        """Write config.json atomically (a file path, or a directory to write config.json into)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        atomic_write_json(path, self.to_hf_dict())

    @classmethod
    def from_source_config(
        cls,
        d: dict[str, Any],
        *,
        max_length: int,
        window: int | list[int],
        dilation: int | list[int | list[int]] = 1,
        position_embedding_style: str | None = None,
    ) -> LongformerConfig:
        """The config of a long model made from a BERT/RoBERTa config dict (for `longformer convert`).

        max_length: tokens the new position table must hold. The table gets max_length rows for
            "bert"-style positions and max_length + pad_token_id + 1 rows for "roberta"-style ones.
        window: one-sided w (int or one per layer).
        position_embedding_style: default "roberta" for roberta-like sources, "bert" for BERT.
        """
        model_type = d.get("model_type")
        if model_type not in SOURCE_MODEL_TYPES:
            raise ValueError(
                f"unsupported source model_type {model_type!r}: expected one of {sorted(SOURCE_MODEL_TYPES)}"
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        style = position_embedding_style or SOURCE_MODEL_TYPES[model_type]
        bert = model_type == "bert"
        # transformers' BertConfig / RobertaConfig defaults for keys the file omits.
        defaults = {**HF_DEFAULTS, "vocab_size": 50265 if model_type == "roberta" else 30522,
                    "pad_token_id": 0 if bert else 1, "bos_token_id": None if bert else 0,
                    "eos_token_id": None if bert else 2, "sep_token_id": None}
        d = {**defaults, **d}
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        kwargs.pop("architectures", None)
        pad = kwargs["pad_token_id"]
        if pad is None:
            raise ValueError("source config has pad_token_id null: the position table needs a padding id")
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        if kwargs["sep_token_id"] is None and not bert:
            kwargs["sep_token_id"] = kwargs["eos_token_id"]  # RoBERTa's </s> separates question and context
        kwargs.update(
            pad_token_id=pad,
            max_position_embeddings=max_length + (pad + 1 if style == "roberta" else 0),
            attention_window=window,
            attention_dilation=dilation,
            position_embedding_style=style,
        )
        return cls(**kwargs)


def _default_labels(n: int) -> dict[int, str]:
    return {i: f"LABEL_{i}" for i in range(n)}
