"""Load and save Hugging Face LED directories (the layout of allenai/led-base-16384).

Our module names ARE transformers' names, so the key mapping is the identity up to three facts:
- an `LEDModel` checkpoint has no `led.` prefix (and no `lm_head` / `final_logits_bias`);
- tied embeddings may be stored once (`led.shared.weight`, as transformers 5 saves) or under every name
  (`led.encoder.embed_tokens.weight`, `led.decoder.embed_tokens.weight`, `lm_head.weight`, older files);
- `final_logits_bias` may be absent: transformers then uses zeros (its `_keys_to_ignore_on_load_missing`).
Anything else missing, unexpected or mis-shaped is an error that lists the keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write_json, read_config, read_json, read_state_dict, resolve_checkpoint, save_safetensors
from ..errors import CheckpointFileError
from .config import GENERATION_KEYS, UNSUPPORTED_GENERATION, LEDConfig

TIED_KEYS = ("led.shared.weight", "led.encoder.embed_tokens.weight", "led.decoder.embed_tokens.weight", "lm_head.weight")
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


class CheckpointError(CheckpointFileError):
    """A checkpoint whose tensors do not fit the model: names every missing, unexpected or mis-shaped key."""


def to_model_keys(sd: dict[str, torch.Tensor], model: nn.Module, config: LEDConfig) -> dict[str, torch.Tensor]:
    """Rename a HF LED state dict to `model`'s keys; raise CheckpointError listing every mismatch."""
    is_lm = _is_lm(model)
    has_prefix = any(k.startswith("led.") for k in sd)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if is_lm and not has_prefix and key not in ("final_logits_bias", "lm_head.weight"):
            key = "led." + key  # an LEDModel checkpoint loaded with a head
        if not is_lm:
            if key in ("final_logits_bias", "lm_head.weight"):
                continue  # a head we do not have, as transformers' LEDModel ignores it
            key = key.removeprefix("led.")
        out[key] = tensor
    tied = list(TIED_KEYS) if is_lm else [k.removeprefix("led.") for k in TIED_KEYS[:3]]
    if config.tie_word_embeddings:
        source = next((k for k in tied if k in out), None)
        if source is not None:
            for k in tied:
                out.setdefault(k, out[source])
    expected = model.state_dict()
    if is_lm and "final_logits_bias" not in out:
        out["final_logits_bias"] = torch.zeros(expected["final_logits_bias"].shape)
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(out[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(out) & set(expected) if out[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                parts.append(f"  {len(items)} {title} key(s):\n    {shown}")
        raise CheckpointError("the checkpoint does not match the LED config:\n" + "\n".join(parts))
    return out


def read_generation_defaults(directory: Path, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Generation defaults as transformers finds them: generation_config.json if present, else config.json."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return {k: v for k, v in config_dict.items()
                if (k in GENERATION_KEYS and v is not None) or k in UNSUPPORTED_GENERATION}
    source = read_json(path)
    defaults = {k: v for k, v in source.items() if k in GENERATION_KEYS and v is not None}
    defaults.update({k: v for k, v in source.items() if k in UNSUPPORTED_GENERATION})  # generate() refuses these
    # transformers then takes special tokens from this file alone (a missing one is None, and a missing
    # decoder_start_token_id falls back to bos_token_id), not from config.json.
    defaults.update({k: source.get(k) for k in TOKEN_KEYS})
    return defaults


def _is_lm(model: nn.Module) -> bool:
    """LEDForConditionalGeneration (a head over `led`) rather than LEDModel; told apart by shape, so
    that this module never imports the model module (which imports this one)."""
    return hasattr(model, "lm_head")


def from_pretrained(path: str | os.PathLike, cls: type, dtype: torch.dtype | None = None,
                    revision: str | None = None, **config_overrides: Any) -> nn.Module:
    """Build `cls` (LEDForConditionalGeneration or LEDModel) from a HF LED dir or hub id; every tensor must fit."""
    directory = resolve_checkpoint(path, revision)
    config_dict = read_config(directory)
    config = LEDConfig.from_file_dict(config_dict, directory / "config.json", **config_overrides)
    model = from_state_dict(read_state_dict(directory), config, cls)
    if _is_lm(model):
        model.generation_defaults = read_generation_defaults(directory, config_dict)
    if dtype is not None:
        model.to(dtype)
    return model


def from_state_dict(sd: dict[str, torch.Tensor], config: LEDConfig, cls: type) -> nn.Module:
    """Build `cls` from HF-named tensors without random init work; raises CheckpointError on mismatch."""
    with torch.device("meta"):
        model = cls(config)  # every tensor comes from the checkpoint
    model.load_state_dict(to_model_keys(sd, model, config), strict=True, assign=True)
    if config.tie_word_embeddings:
        _retie(model)
    return model.eval()


def _retie(model: nn.Module) -> None:
    """`assign=True` loading gives each name its own Parameter: share the embedding again."""
    led = model.led if _is_lm(model) else model
    led.encoder.embed_tokens = led.shared
    led.decoder.embed_tokens = led.shared
    if _is_lm(model):
        model.lm_head.weight = led.shared.weight


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors to save, under transformers' names; a tied embedding once (`led.shared.weight`)."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        is_lm = _is_lm(model)
        for k in TIED_KEYS[1:]:
            sd.pop(k if is_lm else k.removeprefix("led."), None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write config.json, model.safetensors (and generation_config.json when the model has generation
    defaults), each atomically; transformers' LEDForConditionalGeneration.from_pretrained loads the result."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    save_safetensors(directory / "model.safetensors", hf_state_dict(model))
    keep = set(GENERATION_KEYS) | set(TOKEN_KEYS) | set(UNSUPPORTED_GENERATION)
    defaults = {k: v for k, v in model.config.extra.items() if k in keep and v is not None}
    defaults.update({k: v for k, v in (getattr(model, "generation_defaults", None) or {}).items()
                     if k in keep and v is not None})
    if any(k in GENERATION_KEYS or k in UNSUPPORTED_GENERATION for k in defaults):
        # transformers then reads generation settings from this file only, so it must carry the token ids too.
        for k in TOKEN_KEYS:
            if defaults.get(k) is None:
                defaults[k] = getattr(model.config, k)
        atomic_write_json(directory / "generation_config.json", defaults)
    return directory
