"""Output dataclasses of the encoder and its task models (tensors shapes in the field comments)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LongformerModelOutput:
    last_hidden_state: torch.Tensor  # (B, T, C)
    pooler_output: torch.Tensor | None = None  # (B, C), tanh(dense(first token)) when the model has a pooler
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer, (B, T, C) each


@dataclass
class MaskedLMOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class TokenClassifierOutput:
    logits: torch.Tensor  # (B, T, num_labels)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class QuestionAnsweringOutput:
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MultipleChoiceOutput:
    logits: torch.Tensor  # (B, num_choices)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
