"""What gets exported: the model class named in config.json, wrapped as a graph of named tensors.

A graph takes ``input_ids``, ``attention_mask`` and ``global_attention_mask`` (transformers' names; int64,
(B, T), or (B, N, T) for multiple choice) and returns the fields of the model's output dataclass in order
(``last_hidden_state``, ``pooler_output``, ``logits``, ``start_logits``, ``end_logits``). The masks are
required inputs: the defaults some task models apply when a mask is None (first token global for
classification, the question for QA) are the caller's job in a graph.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._files import resolve_checkpoint
from ..encoder import (LongformerForMaskedLM, LongformerForMultipleChoice, LongformerForQuestionAnswering,
                       LongformerForSequenceClassification, LongformerForTokenClassification, LongformerModel,
                       LongformerSelfAttention)
from ..errors import CheckpointFileError

INPUT_NAMES = ("input_ids", "attention_mask", "global_attention_mask")
PARTS = ("model", "encoder")
# class name -> (class, output fields in order); LongformerModel's pooler_output exists only with a pooler
ENCODER_CLASSES: dict[str, tuple[type, tuple[str, ...]]] = {
    "LongformerModel": (LongformerModel, ("last_hidden_state", "pooler_output")),
    "LongformerForMaskedLM": (LongformerForMaskedLM, ("logits",)),
    "LongformerForSequenceClassification": (LongformerForSequenceClassification, ("logits",)),
    "LongformerForQuestionAnswering": (LongformerForQuestionAnswering, ("start_logits", "end_logits")),
    "LongformerForTokenClassification": (LongformerForTokenClassification, ("logits",)),
    "LongformerForMultipleChoice": (LongformerForMultipleChoice, ("logits",)),
}
LED_CLASSES = ("LEDForConditionalGeneration", "LEDModel")


class ExportError(ValueError):
    """A model, file or option the exporter cannot handle; the message says what to do instead."""


@dataclass
class Exportable:
    """A loaded model ready to trace: ``graph(input_ids, attention_mask, global_attention_mask)``."""

    graph: nn.Module  # returns a tuple of tensors named output_names
    output_names: tuple[str, ...]
    architecture: str  # the config.json class name
    part: str  # "model" or "encoder"
    max_length: int  # longest input the position table holds
    vocab_size: int
    pad_token_id: int
    choices: int | None  # multiple choice: the N of (B, N, T) inputs; else None


class _EncoderGraph(nn.Module):
    """A Longformer model (or task model) with tensor inputs and a tuple of named outputs."""

    def __init__(self, model: nn.Module, fields: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.fields = model, fields

    def forward(self, input_ids, attention_mask, global_attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         global_attention_mask=global_attention_mask)
        return tuple(getattr(out, f) for f in self.fields)


class _LEDEncoderGraph(nn.Module):
    """The LED encoder: (B, T) ids and 0/1 masks -> last_hidden_state (B, T, C)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, global_attention_mask):
        return (self.encoder(input_ids, attention_mask != 0, global_attention_mask != 0),)


def read_architecture(path: str | os.PathLike) -> tuple[str, dict]:
    """The model class named in ``path/config.json`` (``architectures[0]``, else from ``model_type``)."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path} is not a directory: MODEL must be a checkpoint dir with config.json and weights")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{path} has no config.json: MODEL must be a checkpoint dir with config.json and weights")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{config_file} is not valid JSON: {err}") from None
    names = config.get("architectures") or []
    if names:
        return str(names[0]), config
    fallback = {"longformer": "LongformerModel", "led": "LEDModel"}.get(config.get("model_type"))
    if fallback is None:
        raise ExportError(f"{config_file} names no architectures and model_type {config.get('model_type')!r} is not "
                          "longformer or led: export supports Longformer models (see `longformer convert`) and LED")
    return fallback, config


def load_for_export(path: str | os.PathLike, part: str = "model") -> Exportable:
    """Load the checkpoint dir's model (fp32, eval mode) and wrap it for tracing.

    part: "model" (the whole model named in config.json) or "encoder" (a task model's bare encoder,
    the LED's encoder). The LED decoder is not exported.
    """
    if part not in PARTS:
        raise ExportError(f"--part must be one of {PARTS}, got {part!r}")
    try:
        path = resolve_checkpoint(path)  # a local directory, or a hub id through huggingface_hub's cache
    except CheckpointFileError as err:
        raise ExportError(str(err)) from None
    name, config = read_architecture(path)
    if name in ENCODER_CLASSES:
        cls, fields = ENCODER_CLASSES[name]
        model = _load(lambda: cls.from_pretrained(path))
        choices = None
        if part == "encoder" and name != "LongformerModel":
            model, name, fields = model.longformer, "LongformerModel", ("last_hidden_state", "pooler_output")
        if name == "LongformerModel" and model.pooler is None:
            fields = ("last_hidden_state",)
        if name == "LongformerForMultipleChoice":
            choices = 2
        c = model.config
        graph = _EncoderGraph(model, fields)
        exp = Exportable(graph, fields, name, part, c.max_length, c.vocab_size, c.pad_token_id, choices)
    elif name in LED_CLASSES:
        if part != "encoder":
            raise ExportError(f"{name}: only the LED encoder can be exported (the decoder is not supported); "
                              "pass --part encoder")
        from .. import led

        model = _load(lambda: led.from_pretrained(path, cls=getattr(led, name)))
        encoder = model.led.encoder if name == "LEDForConditionalGeneration" else model.encoder
        c = model.config
        exp = Exportable(_LEDEncoderGraph(encoder), ("last_hidden_state",), name, part,
                         encoder.max_positions, c.vocab_size, c.pad_token_id or 0, None)
    else:
        supported = ", ".join([*ENCODER_CLASSES, *LED_CLASSES])
        raise ExportError(f"cannot export architecture {name!r} (from {Path(path) / 'config.json'}): supported are "
                          f"{supported} (a BERT/RoBERTa/BART checkpoint becomes one with `longformer convert`)")
    exp.graph.float().eval()
    return exp


def _load(load):
    try:
        return load()
    except (FileNotFoundError, ValueError) as err:
        first = str(err).strip().splitlines()
        raise ExportError(f"cannot load the model: {first[0] if first else type(err).__name__}"
                          + (" (...)" if len(first) > 1 else "")) from err


def set_attention_impl(graph: nn.Module, impl: str) -> None:
    """Point every Longformer self-attention of ``graph`` at one implementation of the attention core."""
    for m in graph.modules():
        if isinstance(m, LongformerSelfAttention):
            m.impl = impl


def attention_impls(graph: nn.Module) -> set[str]:
    return {m.impl for m in graph.modules() if isinstance(m, LongformerSelfAttention)}
