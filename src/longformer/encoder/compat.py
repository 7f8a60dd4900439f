"""The parts of transformers' model interface that `transformers.Trainer` and PEFT call on a model,
written for our encoder and task models without importing transformers (it stays optional).

- `activation_checkpointing_enable` / `gradient_checkpointing_enable` with transformers' arguments
  (`*_kwargs` for torch.utils.checkpoint, `every_n_layers`, `offload`), `supports_gradient_checkpointing`
  and `is_gradient_checkpointing`: what Trainer calls for `TrainingArguments(gradient_checkpointing=True)`.
- `forward_flags`: the transformers keywords PEFT's task wrappers pass to forward
  (`output_attentions`, `output_hidden_states`, `return_dict`, `head_mask`); we honour the ones we can
  and refuse the others with an error that says why.
- `get_input_embeddings` / `set_input_embeddings`, `base_model_prefix`, `main_input_name`.
- `pretrained_class`: once transformers is imported, our models are built as subclasses of its
  `PreTrainedModel` (see there for why and what that changes).
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .outputs import ModelOutput


def checkpoint_function(kwargs: dict[str, Any] | None = None, offload: bool = False) -> Callable:
    """torch.utils.checkpoint.checkpoint with `kwargs` (default use_reentrant=False); with `offload`,
    the activations it keeps are held in (pinned, on CUDA) host memory."""
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    if not offload:
        return functools.partial(checkpoint, **kwargs)

    def offloaded(function, *args, **kw):
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return checkpoint(function, *args, **kwargs, **kw)

    return offloaded


def forward_flags(output_attentions: bool | None, output_hidden_states: bool | None,
                  head_mask: torch.Tensor | None) -> bool:
    """Check the transformers keywords a forward cannot honour; returns output_hidden_states as a bool."""
    if output_attentions:
        raise ValueError(
            "output_attentions=True is not supported: our attention kernels never build the (T x T) probability "
            "matrix. To inspect attention probabilities, load the checkpoint in transformers' Longformer class "
            "(longformer.accelerate falls back to its code for such calls)")
    if head_mask is not None:
        raise ValueError("head_mask is not supported by this Longformer; mask heads by editing their weights instead")
    return bool(output_hidden_states)


def finish(out: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
    """transformers' rule: return_dict=False gives the tuple of the non-None fields."""
    return out.to_tuple() if return_dict is False else out


def _base_model(model) -> nn.Module:
    """The bare encoder model: a task model's `.longformer`, or the model itself."""
    return model.longformer if hasattr(model, "longformer") else model


def _encoder_of(model) -> Any:
    return _base_model(model).encoder


def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                    every_n_layers: int = 1, offload: bool = False) -> None:
    """Recompute encoder layers in backward instead of keeping their activations (transformers' signature).

    activation_checkpointing_kwargs: passed to torch.utils.checkpoint.checkpoint (default
    use_reentrant=False). every_n_layers: checkpoint layers 0, n, 2n, ... only. offload: keep the
    checkpointed inputs in host memory.
    """
    if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1:
        raise ValueError(f"every_n_layers must be a positive int, got {every_n_layers!r}")
    encoder = _encoder_of(self)
    encoder.checkpoint_fn = checkpoint_function(activation_checkpointing_kwargs, offload)
    encoder.every_n_layers = every_n_layers
    encoder.gradient_checkpointing = True


def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                  every_n_layers: int = 1, offload: bool = False) -> None:
    """transformers' older name of `activation_checkpointing_enable` (same arguments)."""
    activation_checkpointing_enable(self, gradient_checkpointing_kwargs, every_n_layers, offload)


def gradient_checkpointing_disable(self) -> None:
    _encoder_of(self).gradient_checkpointing = False


def is_gradient_checkpointing(self) -> bool:
    return _encoder_of(self).gradient_checkpointing


def get_input_embeddings(self) -> nn.Embedding:
    return _base_model(self).embeddings.word_embeddings


def set_input_embeddings(self, embedding: nn.Embedding) -> None:
    _base_model(self).embeddings.word_embeddings = embedding


# Our model classes by name, for `pretrained_class` and for unpickling its classes (`__getattr__` below).
_MODELS: dict[str, type] = {}


def transformers_interface(cls: type) -> type:
    """Class decorator: give a model (it or its `.longformer` holds `.encoder` and `.embeddings`) the
    methods and attributes of transformers' model interface that Trainer and PEFT call or read, and
    build it as a `PreTrainedModel` once transformers is imported (see `pretrained_class`)."""
    cls.supports_gradient_checkpointing = True
    cls.activation_checkpointing_enable = activation_checkpointing_enable
    cls.gradient_checkpointing_enable = gradient_checkpointing_enable
    cls.activation_checkpointing_disable = gradient_checkpointing_disable
    cls.gradient_checkpointing_disable = gradient_checkpointing_disable
    cls.is_gradient_checkpointing = property(is_gradient_checkpointing)
    cls.is_activation_checkpointing = property(is_gradient_checkpointing)
    cls.get_input_embeddings = get_input_embeddings
    cls.set_input_embeddings = set_input_embeddings
    cls.base_model_prefix = "longformer"
    cls.main_input_name = "input_ids"
    _MODELS[cls.__name__] = cls

    def __new__(klass, *args, **kwargs):
        if klass is cls and "transformers" in sys.modules:
            klass = pretrained_class(cls)
        return object.__new__(klass)

    cls.__new__ = staticmethod(__new__)
    return cls


@functools.cache
def _pretrained_base() -> type:
    """transformers' PreTrainedModel with nn.Module's constructor and its own behaviour kept out.

    Its __init__ wants a transformers config (ours is a dataclass with the same fields), and its
    to/cuda/half/float/train/eval add checks for quantized and kernel-swapped models that ours never
    are: this base puts nn.Module's back, so a model behaves as it does without transformers.
    """
    from transformers import PreTrainedModel

    kept = {name: getattr(nn.Module, name) for name in ("to", "cuda", "half", "float", "train", "eval")}
    return type("LongformerPreTrainedBase", (PreTrainedModel,), {
        **kept, "__module__": __name__, "__qualname__": "LongformerPreTrainedBase",
        "__init__": lambda self, *args, **kwargs: nn.Module.__init__(self)})


@functools.cache
def pretrained_class(cls: type) -> type:
    """`cls` (one of our models) as a subclass of transformers' `PreTrainedModel`, same name.

    Why: `transformers.Trainer.save_model()` calls `save_pretrained` (so config.json is written) only on
    instances of `PreTrainedModel`; anything else gets bare weights. transformers stays optional, and
    importing its modeling code costs ~3.5 s, so our classes do not inherit from it; instead, when
    transformers has been imported (a Trainer user always has), `cls(...)` builds an instance of this
    subclass. Its methods are ours first (forward, from_pretrained, save_pretrained, checkpointing), then
    PreTrainedModel's extras (num_parameters, floating_point_ops, push_to_hub, ...).
    """
    return type(cls.__name__, (cls, _pretrained_base()), {
        "__module__": __name__, "__qualname__": cls.__name__, "__doc__": cls.__doc__})


def __getattr__(name: str) -> type:
    # pickle finds the classes pretrained_class makes here, by module and name.
    if name in _MODELS:
        return pretrained_class(_MODELS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
