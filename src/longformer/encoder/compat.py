"""The parts of transformers' model interface that `transformers.Trainer` and PEFT call on a model,
written for our encoder and task models without importing transformers (it stays optional).

- `activation_checkpointing_enable` / `gradient_checkpointing_enable` with transformers' arguments
  (`*_kwargs` for torch.utils.checkpoint, `every_n_layers`, `offload`), `supports_gradient_checkpointing`
  and `is_gradient_checkpointing`: what Trainer calls for `TrainingArguments(gradient_checkpointing=True)`.
- `forward_flags`: the transformers keywords PEFT's task wrappers pass to forward
  (`output_attentions`, `output_hidden_states`, `return_dict`, `head_mask`); we honour the ones we can
  and refuse the others with an error that says why.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
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


def _encoder_of(model) -> Any:
    return model.longformer.encoder if hasattr(model, "longformer") else model.encoder


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


def checkpointing_interface(cls: type) -> type:
    """Class decorator: give a model (it or its `.longformer` holds `.encoder`) transformers'
    checkpointing methods and attributes, the ones transformers.Trainer and PEFT call or read."""
    cls.supports_gradient_checkpointing = True
    cls.activation_checkpointing_enable = activation_checkpointing_enable
    cls.gradient_checkpointing_enable = gradient_checkpointing_enable
    cls.activation_checkpointing_disable = gradient_checkpointing_disable
    cls.gradient_checkpointing_disable = gradient_checkpointing_disable
    cls.is_gradient_checkpointing = property(is_gradient_checkpointing)
    cls.is_activation_checkpointing = property(is_gradient_checkpointing)
    return cls
