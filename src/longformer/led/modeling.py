"""LED: a Longformer encoder (sliding-window + global attention) and a BART decoder.

Module and parameter names follow transformers' LED (`led.encoder.layers.N.self_attn.longformer_self_attn.
query`, `led.decoder.layers.N.encoder_attn.k_proj`, `final_logits_bias`, `lm_head`...), so a Hugging Face
state dict loads without renaming (see hub.py). The encoder self-attention is the encoder package's
`LongformerSelfAttention`, which calls the one attention core; nothing here re-implements it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.api import check_mask
from ..encoder.attention import LongformerSelfAttention
from ..encoder.outputs import ModelOutput
from ..linear import ACTIVATIONS, linear
from .config import LEDConfig
from .decoder import LEDDecoder



class LEDEncoderAttention(nn.Module):
    """Longformer self-attention (`longformer_self_attn`) followed by the output projection `output`."""

    def __init__(self, d_model: int, num_heads: int, window: int, dilation: int | list[int], dropout: float) -> None:
        super().__init__()
        self.longformer_self_attn = LongformerSelfAttention(d_model, num_heads, window, dilation=dilation, dropout=dropout)
        self.output = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, global_mask: torch.Tensor | None) -> torch.Tensor:
        ctx = self.longformer_self_attn(x, attention_mask, global_mask)  # (B, T, C)
        if attention_mask is not None:
            # transformers zeroes a padded query's attention; do the same so padded positions match too.
            ctx = ctx * attention_mask[..., None].to(ctx.dtype)
        return linear(ctx, self.output)


class LEDEncoderLayer(nn.Module):
    """Post-LayerNorm block: Longformer self-attention, then feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, window: int, dilation: int | list[int],
                 activation: str, dropout: float, attention_dropout: float, activation_dropout: float) -> None:
        super().__init__()
        self.self_attn = LEDEncoderAttention(d_model, num_heads, window, dilation, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.activation = activation
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, global_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.self_attn(x, attention_mask, global_mask)
        x = self.self_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        h = F.dropout(linear(x, self.fc1, self.activation), self.activation_dropout, self.training)
        if self.training and self.dropout > 0:
            return self.final_layer_norm(x + F.dropout(linear(h, self.fc2), self.dropout, self.training))
        return self.final_layer_norm(linear(h, self.fc2, residual=x))  # one fused GEMM in inference


class LEDEncoder(nn.Module):
    """Token + learned position embeddings (positions from 0, no offset), LayerNorm, Longformer layers."""

    def __init__(self, config: LEDConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        activation = config.activation_function  # a name: linear() fuses it into fc1 where it can
        self.embed_tokens = embed_tokens
        self.embed_positions = nn.Embedding(config.max_encoder_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(
            LEDEncoderLayer(config.d_model, config.encoder_attention_heads, config.encoder_ffn_dim, w, r, activation,
                            config.dropout, config.attention_dropout, config.activation_dropout)
            for w, r in zip(config.attention_window, config.attention_dilation)
        )
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.dropout = config.dropout

    @property
    def max_positions(self) -> int:
        return self.embed_positions.num_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                global_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, C). Masks are bool (B, T) (already checked by the caller).

        A token that is padding is never global (as transformers: padding wins). Padded positions output
        what transformers outputs there (attention context 0), though nobody should read them.
        """
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        x = F.dropout(self.layernorm_embedding(x), self.dropout, self.training)
        if global_attention_mask is not None and attention_mask is not None:
            global_attention_mask = global_attention_mask & attention_mask
        for layer in self.layers:
            x = layer(x, attention_mask, global_attention_mask)
        return x


class LEDModel(nn.Module):
    """`shared` token embedding, `encoder` (Longformer) and `decoder` (BART)."""

    def __init__(self, config: LEDConfig) -> None:
        super().__init__()
        self.config = config
        activation = ACTIVATIONS[config.activation_function]
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        # transformers 5 ties all three embeddings when tie_word_embeddings, and none of them otherwise.
        tied = config.tie_word_embeddings
        enc_embed = self.shared if tied else nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        dec_embed = self.shared if tied else nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = LEDEncoder(config, enc_embed)
        self.decoder = LEDDecoder(dec_embed, config.max_decoder_position_embeddings, config.decoder_layers,
                                  config.decoder_attention_heads, config.decoder_ffn_dim, activation, config.dropout,
                                  config.attention_dropout, config.activation_dropout)
        init_weights(self, config.init_std)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               global_attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        """Check inputs, choose the default global token, run the encoder once.

        Args:
            input_ids: (B, T) token ids, T <= max_encoder_position_embeddings.
            attention_mask: (B, T) 1 = token, 0 = padding (None: no padding).
            global_attention_mask: (B, T) 1 = global. None: the first non-padded token of each row is global
                (transformers' LED uses no global token then; pass zeros to match that).
        Returns:
            EncoderOutput with last_hidden_state (B, T, C) and the bool masks actually used.
        """
        c = self.config
        _check_ids("input_ids", input_ids, c.vocab_size)
        B, T = input_ids.shape
        if T > self.encoder.max_positions:
            raise ValueError(
                f"input_ids has {T} tokens but this LED's encoder position table holds "
                f"max_encoder_position_embeddings={self.encoder.max_positions}: shorten the input, or make a "
                f"longer model with `longformer convert` (longformer.convert.bart_to_led(..., max_length=...))"
            )
        attention_mask = check_mask("attention_mask", attention_mask, B, T, input_ids.device)
        global_mask = check_mask("global_attention_mask", global_attention_mask, B, T, input_ids.device)
        if global_mask is None:
            global_mask = first_token_global(attention_mask, B, T, input_ids.device)
        hidden = self.encoder(input_ids, attention_mask, global_mask)
        return EncoderOutput(hidden, attention_mask, global_mask)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> LEDModel:
        """Load a Hugging Face LED dir or hub id without its LM head (see hub.py)."""
        from .hub import from_pretrained

        return from_pretrained(path, cls, **kwargs)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that transformers' LEDModel loads."""
        from .hub import save_pretrained

        save_pretrained(self, path)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                global_attention_mask: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None,
                encoder_outputs: EncoderOutput | None = None) -> LEDOutput:
        """Teacher-forced pass. decoder_input_ids (N, t) default to input_ids shifted right (as transformers).

        Returns LEDOutput with last_hidden_state (decoder, (B, t, C)) and encoder_last_hidden_state.
        """
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, global_attention_mask)
        if decoder_input_ids is None:
            if input_ids is None:
                raise ValueError("give decoder_input_ids (or input_ids to shift right)")
            decoder_input_ids = shift_tokens_right(input_ids, self.config.pad_token_id, self.config.decoder_start_token_id)
        _check_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size)
        N, t = decoder_input_ids.shape
        dec_mask = check_mask("decoder_attention_mask", decoder_attention_mask, N, t, decoder_input_ids.device)
        enc = encoder_outputs
        if enc.last_hidden_state.shape[0] != N:
            raise ValueError(
                f"decoder_input_ids has {N} rows but the encoder input has {enc.last_hidden_state.shape[0]}"
            )
        hidden = self.decoder(decoder_input_ids, enc.last_hidden_state, enc.attention_mask, dec_mask)
        return LEDOutput(last_hidden_state=hidden, encoder_last_hidden_state=enc.last_hidden_state)


class LEDForConditionalGeneration(nn.Module):
    """LEDModel (`led`) + `lm_head` (tied to the shared embedding by default) + `final_logits_bias`."""

    def __init__(self, config: LEDConfig) -> None:
        super().__init__()
        self.config = config
        self.led = LEDModel(config)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.led.shared.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=config.init_std)
        self.generation_defaults: dict = {}  # read from generation_config.json / config.json by hub.py

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden) + self.final_logits_bias

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                global_attention_mask: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                encoder_outputs: EncoderOutput | None = None) -> LEDOutput:
        """Logits (B, t, V) of the next token at every decoder position; loss when labels (B, t) are given
        (-100 = ignored). Without decoder_input_ids, labels (else input_ids) shifted right are used."""
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        out = self.led(input_ids, attention_mask, global_attention_mask, decoder_input_ids, decoder_attention_mask,
                       encoder_outputs)
        logits = self.logits(out.last_hidden_state)
        loss = None if labels is None else F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                           labels.reshape(-1), ignore_index=-100)
        return LEDOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                         encoder_last_hidden_state=out.encoder_last_hidden_state)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 global_attention_mask: torch.Tensor | None = None, **settings) -> torch.Tensor:
        """Summarise: see `longformer.led.generation.generate` for the settings. Returns (B', L) token ids."""
        from .generation import generate

        return generate(self, input_ids, attention_mask, global_attention_mask, **settings)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> LEDForConditionalGeneration:
        """Load a Hugging Face LED dir or hub id (config.json + weights; see hub.py)."""
        from .hub import from_pretrained

        return from_pretrained(path, cls, **kwargs)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that transformers' LEDForConditionalGeneration loads."""
        from .hub import save_pretrained

        save_pretrained(self, path)


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, C)
    attention_mask: torch.Tensor | None  # bool (B, T) or None (no padding)
    global_attention_mask: torch.Tensor | None  # bool (B, T)


# A ModelOutput like transformers' (key, index and attribute access; loss first, then logits, as
# transformers.Trainer reads them); eq=False keeps dict equality (see encoder/outputs.py).
@dataclass(eq=False)
class LEDOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, t, V)
    last_hidden_state: torch.Tensor | None = None  # decoder, (B, t, C)
    encoder_last_hidden_state: torch.Tensor | None = None  # (B, T, C)


def shift_tokens_right(ids: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> torch.Tensor:
    """(B, t) labels -> decoder inputs: start token first, labels shifted one right, -100 -> pad."""
    if pad_token_id is None or decoder_start_token_id is None:
        raise ValueError("pad_token_id and decoder_start_token_id must be set in the config to build decoder inputs; "
                         "pass decoder_input_ids instead")
    out = ids.new_full(ids.shape, pad_token_id)
    out[:, 1:] = ids[:, :-1]
    out[:, 0] = decoder_start_token_id
    return out.masked_fill(out == -100, pad_token_id)


def first_token_global(attention_mask: torch.Tensor | None, B: int, T: int, device: torch.device) -> torch.Tensor:
    """bool (B, T) with the first non-padded token of each row global (position 0 without padding)."""
    g = torch.zeros(B, T, dtype=torch.bool, device=device)
    if T == 0:
        return g
    if attention_mask is None:
        g[:, 0] = True
        return g
    first = attention_mask.int().argmax(dim=1)  # 0 for an all-padding row, which stays non-global below
    g[torch.arange(B, device=device), first] = True
    return g & attention_mask


def init_weights(module: nn.Module, std: float) -> None:
    """BART's init: normal(0, std) for linear/embedding weights, zero biases and padding rows."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


def _check_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T), got {type(ids).__name__}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)].flatten()[:5].tolist()
        raise ValueError(f"{name} holds ids outside the vocabulary [0, {vocab_size}): e.g. {bad}")


