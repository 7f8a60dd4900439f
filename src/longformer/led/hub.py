"""Load and save Hugging Face LED directories (the layout of allenai/led-base-16384).

Our module names ARE transformers' names, so the key mapping is the identity up to three facts:
- an `LEDModel` checkpoint has no `led.` prefix (and no `lm_head` / `final_logits_bias`);
- tied embeddings may be stored once (`led.shared.weight`, as transformers 5 saves) or under every name
  (`led.encoder.embed_tokens.weight`, `led.decoder.embed_tokens.weight`, `lm_head.weight`, older files);
- `final_logits_bias` may be absent: transformers then uses zeros (its `_keys_to_ignore_on_load_missing`).
Anything else missing, unexpected or mis-shaped is an error that lists the keys.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write_text
from .config import GENERATION_KEYS, UNSUPPORTED_GENERATION, LEDConfig
from .modeling import LEDForConditionalGeneration

TIED_KEYS = ("led.shared.weight", "led.encoder.embed_tokens.weight", "led.decoder.embed_tokens.weight", "lm_head.weight")
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not fit the model: names every missing, unexpected or mis-shaped key."""


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF dir: model.safetensors, pytorch_model.bin, or their sharded index files."""
    from safetensors.torch import load_file

    for index_name, loader in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", _load_bin)):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(loader(str(directory / shard)))
            return sd
    if (directory / "model.safetensors").is_file():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").is_file():
        return _load_bin(str(directory / "pytorch_model.bin"))
    raise FileNotFoundError(
        f"no weights in {directory}: expected model.safetensors or pytorch_model.bin (or a sharded index)"
    )


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def to_model_keys(sd: dict[str, torch.Tensor], model: nn.Module, config: LEDConfig) -> dict[str, torch.Tensor]:
    """Rename a HF LED state dict to `model`'s keys; raise CheckpointError listing every mismatch."""
    is_lm = isinstance(model, LEDForConditionalGeneration)
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
    source = json.loads(path.read_text())
    defaults = {k: v for k, v in source.items() if k in GENERATION_KEYS and v is not None}
    defaults.update({k: v for k, v in source.items() if k in UNSUPPORTED_GENERATION})  # generate() refuses these
    # transformers then takes special tokens from this file alone (a missing one is None, and a missing
    # decoder_start_token_id falls back to bos_token_id), not from config.json.
    defaults.update({k: source.get(k) for k in TOKEN_KEYS})
    return defaults


def from_pretrained(path: str | os.PathLike, cls: type = LEDForConditionalGeneration,
                    dtype: torch.dtype | None = None, **config_overrides: Any) -> nn.Module:
    """Build `cls` (LEDForConditionalGeneration or LEDModel) from a HF LED dir; every tensor must fit."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json (expected a Hugging Face LED directory)")
    config_dict = json.loads((directory / "config.json").read_text())
    config = LEDConfig.from_dict(config_dict, **config_overrides)
    model = from_state_dict(read_state_dict(directory), config, cls)
    if isinstance(model, LEDForConditionalGeneration):
        model.generation_defaults = read_generation_defaults(directory, config_dict)
    if dtype is not None:
        model.to(dtype)
    return model


def from_state_dict(sd: dict[str, torch.Tensor], config: LEDConfig,
                    cls: type = LEDForConditionalGeneration) -> nn.Module:
    """Build `cls` from HF-named tensors without random init work; raises CheckpointError on mismatch."""
    with torch.device("meta"):
        model = cls(config)  # every tensor comes from the checkpoint
    model.load_state_dict(to_model_keys(sd, model, config), strict=True, assign=True)
    if config.tie_word_embeddings:
        _retie(model)
    return model.eval()


def _retie(model: nn.Module) -> None:
    """`assign=True` loading gives each name its own Parameter: share the embedding again."""
    led = model.led if isinstance(model, LEDForConditionalGeneration) else model
    led.encoder.embed_tokens = led.shared
    led.decoder.embed_tokens = led.shared
    if isinstance(model, LEDForConditionalGeneration):
        model.lm_head.weight = led.shared.weight


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors to save, under transformers' names; a tied embedding once (`led.shared.weight`)."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        is_lm = isinstance(model, LEDForConditionalGeneration)
        for k in TIED_KEYS[1:]:
            sd.pop(k if is_lm else k.removeprefix("led."), None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_pretrained(model: nn.Module, path: str | os.PathLike, tokenizer_from: str | os.PathLike | None = None) -> Path:
    """Write config.json, model.safetensors (and generation_config.json when the model has generation
    defaults) atomically; transformers' LEDForConditionalGeneration.from_pretrained loads the result.
    `tokenizer_from`: a directory whose tokenizer files are copied along."""
    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(hf_state_dict(model), tmp, metadata={"format": "pt"})
        os.replace(tmp, directory / "model.safetensors")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    keep = set(GENERATION_KEYS) | set(TOKEN_KEYS) | set(UNSUPPORTED_GENERATION)
    defaults = {k: v for k, v in model.config.extra.items() if k in keep and v is not None}
    defaults.update({k: v for k, v in (getattr(model, "generation_defaults", None) or {}).items()
                     if k in keep and v is not None})
    if any(k in GENERATION_KEYS or k in UNSUPPORTED_GENERATION for k in defaults):
        # transformers then reads generation settings from this file only, so it must carry the token ids too.
        for k in TOKEN_KEYS:
            if defaults.get(k) is None:
                defaults[k] = getattr(model.config, k)
        atomic_write_text(directory / "generation_config.json", json.dumps(defaults, indent=2, sort_keys=True) + "\n")
    if tokenizer_from is not None:
        from ..convert.files import copy_tokenizer_files  # the encoder conversion's copier (length caps raised)

        copy_tokenizer_files(Path(tokenizer_from), directory, model.config.max_encoder_position_embeddings)
    return directory
