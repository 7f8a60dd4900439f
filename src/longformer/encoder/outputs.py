"""Output dataclasses of the encoder and its task models (tensor shapes in the field comments).

They behave like transformers' `ModelOutput`, which `transformers.Trainer`, PEFT and user code index
into: attribute access (`out.logits`), key access (`out["logits"]`), index access (`out[0]`, over the
fields that are not None, in field order), `to_tuple()`, and dict iteration (`keys()`, `items()`). A
field left None is not a key and not in the tuple, as in transformers. `loss` is the first field, so
`out[0]` is the loss when labels were given (Trainer's rule) and the logits otherwise.

Written here, not imported: transformers is an optional dependency.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch


class ModelOutput(OrderedDict):
    """Base of the output dataclasses: a dict of the non-None fields that keeps the attributes in step."""

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)  # KeyError for a field that is None, as transformers
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        OrderedDict.__setitem__(self, key, value)
        object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        # The dataclass __init__ assigns the fields in order, so the keys come out in field order; a
        # field set later (None before) is appended, as transformers does.
        if value is not None and name in self.__dataclass_fields__:
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"cannot delete {key!r} from a {type(self).__name__}")

    def __reduce__(self):  # pickle / copy by fields, not as an OrderedDict
        return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields, in field order."""
        return tuple(self[k] for k in self.keys())


# eq=False: a generated __eq__ would compare tensors field by field (ambiguous); dict equality is kept.
@dataclass(eq=False)
class LongformerModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None  # (B, T, C)
    pooler_output: torch.Tensor | None = None  # (B, C), tanh(dense(first token)) when the model has a pooler
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer, (B, T, C) each


@dataclass(eq=False)
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, T, V)
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, num_labels)
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, T, num_labels)
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class QuestionAnsweringOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None  # (B, T)
    end_logits: torch.Tensor | None = None  # (B, T)
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class MultipleChoiceOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, num_choices)
    hidden_states: tuple[torch.Tensor, ...] | None = None
