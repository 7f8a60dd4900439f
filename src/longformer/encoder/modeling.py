"""The Longformer encoder: embeddings, layers, `LongformerModel`.

Module and parameter names follow transformers' Longformer exactly (`embeddings.word_embeddings`,
`encoder.layer.N.attention.self.query_global`, ...) so checkpoints map by name (see hub.py).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..linear import activation, linear
from . import compat
from .attention import LongformerSelfAttention
from .config import LongformerConfig
from .inputs import prepare_inputs
from .outputs import LongformerModelOutput


class LongformerEmbeddings(nn.Module):
    """Token + position + token-type embeddings, LayerNorm, dropout. Position ids come from the caller."""

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, type_vocab_size: int,
                 pad_token_id: int, eps: float, dropout: float, position_padding_idx: int | None) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        # roberta-style: padding tokens sit at position pad_token_id, a row that never trains (as there).
        self.position_embeddings = nn.Embedding(max_positions, hidden_size, padding_idx=position_padding_idx)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class ResidualNorm(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): transformers' SelfOutput/Output."""

    def __init__(self, in_features: int, hidden_size: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout.p > 0:
            return self.LayerNorm(self.dropout(linear(x, self.dense)) + residual)
        return self.LayerNorm(linear(x, self.dense, residual=residual))  # one fused GEMM in inference


class AttentionBlock(nn.Module):
    """`attention.self` (Longformer self-attention) + `attention.output` (projection, residual, norm)."""

    def __init__(self, hidden_size: int, num_heads: int, window: int, dilation: int | Sequence[int],
                 eps: float, dropout: float, attention_dropout: float, impl: str) -> None:
        super().__init__()
        self.self = LongformerSelfAttention(hidden_size, num_heads, window, dilation, attention_dropout, impl)
        self.output = ResidualNorm(hidden_size, hidden_size, eps, dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, is_global: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, valid, is_global), x)


class Intermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        activation(hidden_act)  # checks the name
        self.hidden_act = hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.dense, self.hidden_act)


class LongformerLayer(nn.Module):
    """One post-norm encoder layer: attention block, then feed-forward with residual and LayerNorm."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, window: int,
                 dilation: int | Sequence[int], hidden_act: str = "gelu", eps: float = 1e-5,
                 dropout: float = 0.1, attention_dropout: float = 0.1, impl: str = "auto") -> None:
        super().__init__()
        self.attention = AttentionBlock(hidden_size, num_heads, window, dilation, eps, dropout, attention_dropout, impl)
        self.intermediate = Intermediate(hidden_size, intermediate_size, hidden_act)
        self.output = ResidualNorm(intermediate_size, hidden_size, eps, dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, is_global: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, valid, is_global)
        return self.output(self.intermediate(x), x)


class LongformerEncoder(nn.Module):
    def __init__(self, config: LongformerConfig, impl: str = "auto") -> None:
        super().__init__()
        c = config
        self.layer = nn.ModuleList(
            LongformerLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.attention_window[i],
                            c.attention_dilation[i], c.hidden_act, c.layer_norm_eps, c.hidden_dropout_prob,
                            c.attention_probs_dropout_prob, impl)
            for i in range(c.num_hidden_layers)
        )
        self.gradient_checkpointing = False
        self.checkpoint_fn = compat.checkpoint_function()  # set by activation_checkpointing_enable
        self.every_n_layers = 1

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, is_global: torch.Tensor | None,
                output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        states = (x,) if output_hidden_states else None
        for i, layer in enumerate(self.layer):
            if (self.gradient_checkpointing and self.training and torch.is_grad_enabled()
                    and i % self.every_n_layers == 0):
                # Recompute the layer in backward: memory O(layers * B * T * C) instead of all activations.
                x = self.checkpoint_fn(layer, x, valid, is_global)
            else:
                x = layer(x, valid, is_global)
            if states is not None:
                states = states + (x,)
        return x, states


class LongformerPooler(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, C): the first token


def init_weights(module: nn.Module, std: float) -> None:
    """transformers' initialisation: N(0, std) weights, zero biases, unit LayerNorms, zero padding row."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@compat.transformers_interface
class LongformerModel(nn.Module):
    """The bare encoder. forward -> LongformerModelOutput(last_hidden_state (B, T, C), pooler_output, hidden_states).

    impl: attention implementation passed to `sliding_window_attention` ("auto" unless testing).
    """

    def __init__(self, config: LongformerConfig, add_pooling_layer: bool = True, impl: str = "auto") -> None:
        super().__init__()
        c = config
        self.config = config
        self.embeddings = LongformerEmbeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings,
                                               c.type_vocab_size, c.pad_token_id, c.layer_norm_eps,
                                               c.hidden_dropout_prob,
                                               c.pad_token_id if c.position_embedding_style == "roberta" else None)
        self.encoder = LongformerEncoder(config, impl)
        self.pooler = LongformerPooler(c.hidden_size) if add_pooling_layer else None
        init_weights(self, c.initializer_range)


    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = False,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> LongformerModelOutput:
        """input_ids: (B, T) token ids, or inputs_embeds (B, T, C). attention_mask: (B, T) 1 = token,
        0 = padding. global_attention_mask: (B, T) 1 = global. token_type_ids / position_ids: (B, T);
        position ids default to the config's position_embedding_style. Any T up to config.max_length.

        transformers' keywords: return_dict=False returns `to_tuple()`; output_attentions=True and a
        head_mask are refused (see compat.forward_flags).
        """
        output_hidden_states = compat.forward_flags(output_attentions, output_hidden_states, head_mask)
        inp = prepare_inputs(self.config, input_ids, attention_mask, global_attention_mask, token_type_ids,
                             position_ids, inputs_embeds)
        x = self.embeddings(input_ids, inp.token_type_ids, inp.position_ids, inputs_embeds)
        x, states = self.encoder(x, inp.valid, inp.is_global, output_hidden_states)
        pooled = self.pooler(x) if self.pooler is not None else None
        return compat.finish(LongformerModelOutput(last_hidden_state=x, pooler_output=pooled, hidden_states=states),
                             return_dict)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> LongformerModel:
        """Load our saved dirs or transformers Longformer dirs (see hub.load_pretrained)."""
        from .hub import load_pretrained

        return load_pretrained(cls, path, **overrides)

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write config.json + model.safetensors that transformers' LongformerModel loads
        (kwargs: transformers' state_dict= and is_main_process=, see hub.save_pretrained)."""
        from .hub import save_pretrained

        save_pretrained(self, path, **kwargs)
