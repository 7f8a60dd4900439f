"""The LED decoder: causal full self-attention + cross-attention, with a key/value cache.

This is ordinary (BART) attention, not Longformer attention: the decoder's sequences are short, so it
uses `torch.nn.functional.scaled_dot_product_attention`. Module and parameter names follow
transformers' LED so checkpoints map one to one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderCache:
    """Keys/values kept between incremental decoder calls.

    self_kv[l]: (k, v) of layer l's self-attention, each (N, H, t_past, D), N decoder rows.
    cross_kv[l]: (k, v) of layer l's cross-attention over the encoder output, each (B, H, S, D): computed
        once per `generate` call. N = B * rows_per_source (the beams of one source share them).
    """

    rows_per_source: int = 1
    self_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def past_length(self) -> int:
        return self.self_kv[0][0].shape[2] if self.self_kv else 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep decoder rows `rows` (N,) of the self-attention cache (beam search picks its parents).

        Beams only ever pick parents of the same source, so the per-source cross cache is unchanged.
        """
        self.self_kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.self_kv]


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (B, S) key mask (True = attend) -> additive (B, 1, 1, S) bias: 0 or the dtype's minimum.

    A finite minimum (not -inf), as transformers: a row whose keys are all padding averages them
    instead of turning into NaN, which keeps logits equal to theirs even on an all-padding row.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)[
        :, None, None, :
    ]


class LEDDecoderAttention(nn.Module):
    """Multi-head attention with projections `q_proj/k_proj/v_proj/out_proj` (all with bias)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C) -> (N, H, T, D)."""
        N, T, _ = x.shape
        return x.view(N, T, self.num_heads, self.head_dim).transpose(1, 2)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """q (N, H, t, D), k/v (N, H, s, D), bias broadcastable to (N, H, t, s) -> (N, t, C) after out_proj."""
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (N, H, t, D)
        N, H, t, D = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(N, t, H * D))

    def cross(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, rows_per_source: int
    ) -> torch.Tensor:
        """Cross-attention of decoder rows x (B*r, t, C) to per-source keys/values k, v (B, H, S, D).

        The r rows of one source (its beams) share k/v: their queries are stacked along the time axis
        (B, H, r*t, D) instead of copying k/v r times. Exact, as cross-attention has no causal mask.
        """
        q = self.heads(self.q_proj(x))  # (B*r, H, t, D)
        r = rows_per_source
        if r == 1:
            return self.attend(q, k, v, bias)
        Br, H, t, D = q.shape
        B = Br // r
        q = q.view(B, r, H, t, D).transpose(1, 2).reshape(B, H, r * t, D)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, r*t, D)
        out = out.view(B, H, r, t, D).permute(0, 2, 3, 1, 4).reshape(Br, t, H * D)
        return self.out_proj(out)


class LEDDecoderLayer(nn.Module):
    """Post-LayerNorm BART block: self-attention, cross-attention, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, activation, dropout: float,
                 attention_dropout: float, activation_dropout: float) -> None:
        super().__init__()
        self.self_attn = LEDDecoderAttention(d_model, num_heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.encoder_attn = LEDDecoderAttention(d_model, num_heads, attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.activation = activation
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def forward(
        self,
        x: torch.Tensor,
        self_kv: tuple[torch.Tensor, torch.Tensor],
        self_bias: torch.Tensor | None,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_bias: torch.Tensor | None,
        rows_per_source: int,
    ) -> torch.Tensor:
        """x (N, t, C); self_kv: keys/values of every decoder position so far, this step's included."""
        attn = self.self_attn
        q = attn.heads(attn.q_proj(x))
        h = attn.attend(q, self_kv[0], self_kv[1], self_bias)
        x = self.self_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        h = self.encoder_attn.cross(x, cross_kv[0], cross_kv[1], cross_bias, rows_per_source)
        x = self.encoder_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        h = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        h = F.dropout(self.fc2(h), self.dropout, self.training)
        return self.final_layer_norm(x + h)


class LEDDecoder(nn.Module):
    """Token + learned position embeddings (positions from 0), LayerNorm, then post-LN decoder layers."""

    def __init__(self, embed_tokens: nn.Embedding, max_positions: int, num_layers: int, num_heads: int,
                 ffn_dim: int, activation, dropout: float, attention_dropout: float,
                 activation_dropout: float) -> None:
        super().__init__()
        d_model = embed_tokens.embedding_dim
        self.embed_tokens = embed_tokens
        self.embed_positions = nn.Embedding(max_positions, d_model)
        self.layers = nn.ModuleList(
            LEDDecoderLayer(d_model, num_heads, ffn_dim, activation, dropout, attention_dropout, activation_dropout)
            for _ in range(num_layers)
        )
        self.layernorm_embedding = nn.LayerNorm(d_model)
        self.dropout = dropout

    @property
    def max_positions(self) -> int:
        return self.embed_positions.num_embeddings

    def cross_cache(self, encoder_hidden: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys/values for encoder output (B, S, C): each (B, H, S, D)."""
        return [layer.encoder_attn.kv(encoder_hidden) for layer in self.layers]

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor | None,
        encoder_mask: torch.Tensor | None = None,
        decoder_mask: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """Decoder hidden states.

        Args:
            input_ids: (N, t) new decoder tokens (positions past..past+t-1, past = cache.past_length).
            encoder_hidden: (B, S, C) encoder output with N = B * rows_per_source; may be None when the
                cache already holds the cross keys/values.
            encoder_mask: bool (B, S), True = real token. Padded source tokens are never attended.
            decoder_mask: bool (N, past + t), True = real decoder token (padding in teacher forcing).
            cache: updated in place (self keys/values appended; cross keys/values filled on first use).
        Returns:
            (N, t, C).
        """
        N, t = input_ids.shape
        past = cache.past_length if cache is not None else 0
        if past + t > self.max_positions:
            raise ValueError(
                f"decoder positions {past}..{past + t - 1} run past the decoder's position table "
                f"(max_decoder_position_embeddings={self.max_positions}): ask for fewer new tokens"
            )
        positions = torch.arange(past, past + t, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        x = F.dropout(self.layernorm_embedding(x), self.dropout, self.training)
        dtype = x.dtype

        rows_per_source = cache.rows_per_source if cache is not None else 1
        if cache is not None and cache.cross_kv:
            cross_kvs = cache.cross_kv
        else:
            if encoder_hidden is None:
                raise ValueError("encoder_hidden is required on the first decoder call (no cross cache yet)")
            cross_kvs = self.cross_cache(encoder_hidden)
            if cache is not None:
                cache.cross_kv = cross_kvs
        if encoder_hidden is not None and encoder_hidden.shape[0] * rows_per_source != N:
            raise ValueError(
                f"decoder input_ids has {N} rows but the encoder output has {encoder_hidden.shape[0]} rows "
                f"(x {rows_per_source} rows per source)"
            )
        cross_bias = padding_bias(encoder_mask, dtype) if encoder_mask is not None else None

        # Causal mask over [past keys | new keys]; a single new token may see everything cached.
        self_bias = None
        if t > 1 or decoder_mask is not None:
            i = torch.arange(t, device=x.device)[:, None] + past
            j = torch.arange(past + t, device=x.device)[None, :]
            allowed = (j <= i)[None, None]  # (1, 1, t, past+t)
            if decoder_mask is not None:
                if tuple(decoder_mask.shape) != (N, past + t):
                    raise ValueError(
                        f"decoder_attention_mask must have shape (N, past+t)=({N}, {past + t}), got "
                        f"{tuple(decoder_mask.shape)}"
                    )
                allowed = allowed & decoder_mask[:, None, None, :]
            self_bias = torch.zeros(allowed.shape, dtype=dtype, device=x.device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )

        new_self_kv = []
        for layer_idx, layer in enumerate(self.layers):
            k, v = layer.self_attn.kv(x)
            if cache is not None and cache.self_kv:
                pk, pv = cache.self_kv[layer_idx]
                k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            new_self_kv.append((k, v))
            x = layer(x, (k, v), self_bias, cross_kvs[layer_idx], cross_bias, rows_per_source)
        if cache is not None:
            cache.self_kv = new_self_kv
        return x
