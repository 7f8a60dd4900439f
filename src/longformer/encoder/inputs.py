"""Checking and normalising the encoder's inputs: masks to bool, default position and token-type ids.

Every check names the argument, what was given and what was expected. Value checks (ids in range,
0/1 masks) read tensor values, so they are skipped while torch.compile traces.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention.api import check_mask
from .config import LongformerConfig


@dataclass
class EncoderInputs:
    valid: torch.Tensor | None  # bool (B, T), True = token; None = no padding
    is_global: torch.Tensor | None  # bool (B, T), True = global (never a padded position); None = none
    token_type_ids: torch.Tensor  # long (B, T)
    position_ids: torch.Tensor  # long (B, T)


def roberta_position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """transformers' create_position_ids_from_input_ids: tokens count from padding_idx + 1, padding
    tokens stay at padding_idx. (B, T) -> (B, T)."""
    mask = input_ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


def _length_error(config: LongformerConfig, T: int) -> ValueError:
    return ValueError(
        f"input length {T} exceeds this model's maximum of {config.max_length} tokens "
        f"(max_position_embeddings={config.max_position_embeddings}, {config.position_embedding_style}-style "
        "positions). `longformer convert SRC DST --max-length N` makes a model with a longer position table."
    )


def _ids(name: str, ids: torch.Tensor | None, shape: tuple[int, int], upper: int, check_values: bool,
         what: str) -> torch.Tensor | None:
    if ids is None:
        return None
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an integer tensor of shape (B, T)={shape}, got {got}")
    if tuple(ids.shape) != shape:
        raise ValueError(f"{name} must have shape (B, T)={shape}, got {tuple(ids.shape)}")
    if check_values and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper}) ({what}), got values from {int(ids.min())} to {int(ids.max())}"
        )
    return ids


def prepare_inputs(
    config: LongformerConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    global_attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> EncoderInputs:
    """Validate the forward arguments of an encoder and return bool masks and default ids."""
    check = not torch.compiler.is_compiling()
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids (B, T) and inputs_embeds (B, T, C)")
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (B, T) integer tensor, got {got}")
        shape, device = (input_ids.shape[0], input_ids.shape[1]), input_ids.device
        _ids("input_ids", input_ids, shape, config.vocab_size, check, f"vocab_size={config.vocab_size}")
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 \
                or inputs_embeds.shape[-1] != config.hidden_size:
            got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, torch.Tensor) else type(inputs_embeds).__name__
            raise ValueError(f"inputs_embeds must have shape (B, T, hidden_size={config.hidden_size}), got {got}")
        shape, device = (inputs_embeds.shape[0], inputs_embeds.shape[1]), inputs_embeds.device
    T = shape[1]
    if T < 1:
        raise ValueError("the input must hold at least one token, got T=0")
    if T > config.max_length:
        raise _length_error(config, T)
    valid = check_mask("attention_mask", attention_mask, *shape, device, check_values=check)
    is_global = check_mask("global_attention_mask", global_attention_mask, *shape, device, check_values=check)
    if valid is not None and is_global is not None:
        is_global = is_global & valid  # a padded token is never global (as in transformers)
    token_type_ids = _ids("token_type_ids", token_type_ids, shape, config.type_vocab_size, check,
                          f"type_vocab_size={config.type_vocab_size}")
    if token_type_ids is None:
        token_type_ids = torch.zeros(shape, dtype=torch.long, device=device)
    position_ids = _ids("position_ids", position_ids, shape, config.max_position_embeddings, check,
                        f"max_position_embeddings={config.max_position_embeddings}")
    if position_ids is None:
        if config.position_embedding_style == "bert":
            position_ids = torch.arange(T, device=device).expand(shape)
        elif input_ids is not None:
            position_ids = roberta_position_ids(input_ids, config.pad_token_id)
        else:  # no ids to find padding in: count every position as a token, as transformers does
            start = config.pad_token_id + 1
            position_ids = torch.arange(start, start + T, device=device).expand(shape)
    return EncoderInputs(valid, is_global, token_type_ids, position_ids)
