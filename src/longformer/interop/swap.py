"""`longformer.accelerate(model)`: transformers' own Longformer and LED models, with their encoder
self-attention running on this project's attention core.

A module swap (liger-kernel style), never a patch of transformers' classes: each
`LongformerSelfAttention` / `LEDEncoderSelfAttention` inside the given model is replaced, in place, by
an `AcceleratedSelfAttention` built from the same `nn.Linear` modules (shared, not copied: the parameter
names, the optimizer's tensors and `save_pretrained` are unchanged). It keeps transformers' interface of
that submodule: the forward keywords `LongformerAttention` / `LEDEncoderAttention` pass and the tuple it
returns, so everything around it (embeddings, padding to the window, outputs, `generate`, Trainer,
pipelines) stays transformers'.

What differs, on purpose:
- `output_attentions=True`: our kernels never build the probability matrix, so such a call runs the
  original transformers module (kept, unregistered, on the same weights): same outputs, transformers'
  speed for that call.
- Attention dropout in training: the local band uses our hash mask (attention/dropout.py), global rows
  torch's dropout; the kept probabilities differ from transformers' random draws (same rate and scale,
  so the same expectation), which makes training runs differ draw by draw, not in distribution.
- A layer with no global token in the batch gives its global projections zero gradients (transformers:
  None), so DDP never reports unused parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from ..encoder.attention import LongformerSelfAttention

SUPPORTED = ("LongformerModel", "LongformerFor* (MaskedLM, SequenceClassification, TokenClassification, "
             "QuestionAnswering, MultipleChoice)", "LEDModel", "LEDForConditionalGeneration",
             "LEDForQuestionAnswering")
PROJECTIONS = ("query", "key", "value", "query_global", "key_global", "value_global")


class AcceleratedSelfAttention(nn.Module):
    """transformers' Longformer/LED encoder self-attention interface on our `LongformerSelfAttention`.

    Registered submodules are exactly the host's six projections (`query` ... `value_global`), so the
    state dict is the host's. The math is our module's (`core`), which holds the same Linear objects;
    `original` is the host module, kept for `output_attentions=True`. Both are stored outside the
    module registry so that their (shared) parameters are not listed twice.
    """

    def __init__(self, original: nn.Module, impl: str = "auto") -> None:
        super().__init__()
        for name in PROJECTIONS:
            setattr(self, name, getattr(original, name))
        # The attributes transformers' module exposes, for code that reads them.
        for name in ("num_heads", "head_dim", "embed_dim", "dropout", "layer_id", "one_sided_attn_window_size",
                     "config"):
            if hasattr(original, name):
                object.__setattr__(self, name, getattr(original, name))
        core = LongformerSelfAttention(original.embed_dim, original.num_heads, original.one_sided_attn_window_size,
                                       dropout=original.dropout, impl=impl)
        for name in PROJECTIONS:
            setattr(core, name, getattr(original, name))  # drop the fresh Linears: share the host's
        object.__setattr__(self, "core", core)
        object.__setattr__(self, "original", original)

    @classmethod
    def from_module(cls, original: nn.Module, impl: str = "auto") -> AcceleratedSelfAttention:
        """The swap for one host module: `layer.attention.self = AcceleratedSelfAttention.from_module(old)`."""
        return cls(original, impl)

    def extra_repr(self) -> str:
        return f"window={self.core.window}, heads={self.core.num_heads}, impl={self.core.impl!r}"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_index_masked: torch.Tensor | None = None,
        is_index_global_attn: torch.Tensor | None = None,
        is_global_attn: bool | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """As transformers' module: hidden_states (B, T, C) with T padded to a multiple of the two-sided
        window by the host model; is_index_masked / is_index_global_attn: bool (B, T); attention_mask:
        the host's float mask (< 0 padding, > 0 global), read only when the bool masks are absent.

        Returns (context (B, T, C),), before the output projection; with output_attentions=True the
        original module's tuple (context, local probabilities[, global probabilities]).
        """
        if output_attentions:
            self.original.train(self.training)
            return self.original(hidden_states, attention_mask=attention_mask, is_index_masked=is_index_masked,
                                 is_index_global_attn=is_index_global_attn, is_global_attn=is_global_attn,
                                 output_attentions=True)
        if is_index_masked is None or is_index_global_attn is None:
            if attention_mask is None:
                raise ValueError("AcceleratedSelfAttention needs is_index_masked and is_index_global_attn "
                                 "(or transformers' float attention_mask), as the host layer passes them")
            is_index_masked, is_index_global_attn = attention_mask < 0, attention_mask > 0
        if is_global_attn is None:
            is_global_attn = bool(is_index_global_attn.any())
        if self.core.training != self.training:
            self.core.train(self.training)
        valid = ~is_index_masked
        global_mask = is_index_global_attn if is_global_attn else None
        return (self.core(hidden_states, valid, global_mask),)


def _host_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(transformers' self-attention classes we replace, the model base classes we accept)."""
    from transformers.models.led.modeling_led import LEDEncoderSelfAttention, LEDPreTrainedModel
    from transformers.models.longformer.modeling_longformer import (LongformerPreTrainedModel,
                                                                    LongformerSelfAttention as HFSelfAttention)

    return (HFSelfAttention, LEDEncoderSelfAttention), (LongformerPreTrainedModel, LEDPreTrainedModel)


def accelerate(model: nn.Module, impl: str = "auto") -> nn.Module:
    """Swap, in place, every encoder self-attention of a transformers Longformer or LED model for
    `AcceleratedSelfAttention` on the same weights; returns the model (calling it twice is a no-op).

    model: an instance of transformers' LongformerModel, LongformerFor*, LEDModel or LEDFor*.
    impl: passed to `sliding_window_attention` ("auto": the compiled kernel on the CPU when it builds).
    """
    try:
        attention_classes, model_classes = _host_classes()
    except ImportError as e:
        raise ImportError("longformer.accelerate works on transformers' models: pip install transformers") from e
    if not isinstance(model, model_classes):
        hint = ""
        if type(model).__module__.startswith("longformer."):
            hint = " (this is already one of longformer's own models, which run on its kernels)"
        raise TypeError(f"longformer.accelerate supports transformers' {', '.join(SUPPORTED)}; got "
                        f"{type(model).__module__}.{type(model).__name__}{hint}")
    targets = [(name, m) for name, m in model.named_modules() if type(m) in attention_classes]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, AcceleratedSelfAttention.from_module(module, impl))
    if not targets and not any(isinstance(m, AcceleratedSelfAttention) for m in model.modules()):
        raise ValueError(f"found no Longformer self-attention module in {type(model).__name__}")
    return model
