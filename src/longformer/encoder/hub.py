"""Checkpoint directories: `load_pretrained` / `save_pretrained` for the encoder and its task models.

A directory holds config.json and model.safetensors (or a sharded model.safetensors.index.json, or
pytorch_model.bin, the layout of allenai/longformer-base-4096). Our parameter names ARE transformers'
Longformer names, so the mapping is a short table of renames applied to foreign keys (gpt-fast style):
legacy prefixes and LayerNorm names, plus where the encoder sits (`longformer.` in task models, bare in
a `LongformerModel` checkpoint). Missing, unexpected or mis-shaped keys are errors that list them; only
a task head absent from the checkpoint is initialised, with a warning naming its keys.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write_json, read_state_dict, resolve_checkpoint, save_safetensors
from ..errors import CheckpointFileError
from .config import LongformerConfig

# Foreign key -> our key: prefix renames, then suffix renames. Reverse them to read our names elsewhere.
PREFIX_RENAMES = {"roberta.": "longformer."}  # early allenai checkpoints were RobertaForMaskedLM-shaped
SUFFIX_RENAMES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
# Buffers some transformers versions saved; they carry no weights.
IGNORED_SUFFIXES = ("embeddings.position_ids",)
ENCODER_PARTS = ("embeddings.", "encoder.", "pooler.")
# Keys of the heads of other task models: dropped with a warning when the target model has no such head.
HEAD_PREFIXES = ("lm_head.", "classifier.", "qa_outputs.", "longformer.pooler.")
# With tie_word_embeddings (the default), the MLM decoder's weight IS the word embedding matrix and its
# bias IS lm_head.bias (transformers ties both): these names are never stored twice. Untied, all are own
# parameters and the decoder uses lm_head.decoder.bias (lm_head.bias is then unused, as there).
TIED = ("lm_head.decoder.weight", "lm_head.decoder.bias")
MAX_LISTED = 25


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def canonical_key(key: str) -> str | None:
    """A checkpoint key in task-model form (encoder under `longformer.`), or None for ignored buffers."""
    for old, new in PREFIX_RENAMES.items():
        if key.startswith(old):
            key = new + key[len(old):]
    for old, new in SUFFIX_RENAMES.items():
        if key.endswith(old):
            key = key[: -len(old)] + new
    if key.endswith(IGNORED_SUFFIXES):
        return None
    if key.startswith(ENCODER_PARTS):
        key = "longformer." + key
    return key


def _tied(model: nn.Module) -> bool:
    return hasattr(model, "lm_head") and model.config.tie_word_embeddings


def _model_keys(model: nn.Module) -> dict[str, torch.Size]:
    """The model's own parameters and buffers in task-model form, tied names left out."""
    bare = not hasattr(model, "longformer")
    keys = {}
    for name, t in model.state_dict().items():
        if name in TIED and _tied(model):
            continue
        keys[("longformer." + name) if bare else name] = t.shape
    return keys


def load_pretrained(cls: type, path: str | os.PathLike, *, impl: str = "auto", dtype: torch.dtype | None = None,
                    revision: str | None = None, **overrides: Any) -> nn.Module:
    """Build `cls` from a checkpoint dir or hub id and load its weights exactly; returns the model in eval mode.

    path: a directory, or a hub id `org/name` (optionally `org/name@revision`, or `revision=`) found
    through huggingface_hub's cache (see longformer._files.resolve_checkpoint).
    overrides: config fields to change (e.g. num_labels=3 for a new classification head). For
    LongformerModel, `add_pooling_layer` defaults to whether the checkpoint has pooler weights.
    """
    path = resolve_checkpoint(path, revision)
    add_pooling_layer = overrides.pop("add_pooling_layer", None)
    config = LongformerConfig.from_json(path, **overrides)
    config.architectures = [cls.__name__]
    state = {}
    for key, tensor in read_state_dict(path).items():
        new = canonical_key(key)
        if new is not None:
            state[new] = tensor
    if "lm_head.bias" not in state and "lm_head.decoder.bias" in state:
        state["lm_head.bias"] = state["lm_head.decoder.bias"]  # older files stored only the decoder's name

    bare = cls.__name__ == "LongformerModel"
    if bare:
        if add_pooling_layer is None:
            add_pooling_layer = "longformer.pooler.dense.weight" in state
        model = cls(config, add_pooling_layer=add_pooling_layer, impl=impl)
    else:
        model = cls(config, impl=impl)
    expected = _model_keys(model)
    for name in TIED:
        if name not in expected:
            state.pop(name, None)  # tied (or no LM head): the same tensor is loaded under its main name

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
                  for k in expected if k in state and state[k].shape != expected[k]]
    missing_encoder = [k for k in missing if k.startswith("longformer.")]
    new_head = [k for k in missing if not k.startswith("longformer.")]
    other_heads = [k for k in unexpected if k.startswith(HEAD_PREFIXES)]
    foreign = [k for k in unexpected if not k.startswith(HEAD_PREFIXES)]
    problems = []
    if missing_encoder:
        hint = ""
        if any(k.endswith(("query_global.weight", "key_global.weight", "value_global.weight")) for k in missing_encoder):
            hint = " (no global projections: a BERT/RoBERTa checkpoint? `longformer convert` makes it a Longformer)"
        problems.append(f"missing {len(missing_encoder)} encoder keys{hint}: {_listing(missing_encoder)}")
    if foreign:
        problems.append(f"{len(foreign)} unexpected keys: {_listing(foreign)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} mis-shaped keys: {_listing(mis_shaped)}")
    if problems:
        raise CheckpointFileError(f"checkpoint {path} does not fit {cls.__name__} ({len(expected)} tensors expected):\n  "
                         + "\n  ".join(problems))
    if other_heads:
        warnings.warn(f"{cls.__name__}.from_pretrained({str(path)!r}): not using {len(other_heads)} checkpoint "
                      f"keys of another head: {_listing(other_heads)}", stacklevel=3)
    if new_head:
        warnings.warn(f"{cls.__name__}.from_pretrained({str(path)!r}): newly initialised {len(new_head)} head keys "
                      f"(train them before use): {_listing(new_head)}", stacklevel=3)

    own = {(k[len("longformer."):] if bare else k): state[k] for k in expected if k in state}
    result = model.load_state_dict(own, strict=False)
    # strict=False only because aliases/tied weights and a new head are absent by design; re-check.
    left = [k for k in result.missing_keys
            if not (k in TIED and _tied(model)) and ("longformer." + k if bare else k) not in new_head]
    if left or result.unexpected_keys:
        raise RuntimeError(f"internal key mapping error: missing {left}, unexpected {result.unexpected_keys}")
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def save_pretrained(model: nn.Module, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None,
                    is_main_process: bool = True, **unsupported: Any) -> None:
    """Write config.json + model.safetensors (each atomically) in transformers' Longformer layout.

    state_dict / is_main_process: transformers' arguments (Trainer passes them): the weights to write
    instead of the model's own (a gathered state dict under FSDP / DeepSpeed), and whether this process
    writes at all.
    """
    if unsupported:
        raise TypeError(f"save_pretrained does not take {sorted(unsupported)} (transformers options we do not "
                        "implement); to publish a saved directory use huggingface_hub.upload_folder")
    if not is_main_process:
        return
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config: LongformerConfig = model.config
    if any(d != 1 for d in config.attention_dilation) or config.position_embedding_style != "roberta":
        warnings.warn(
            "this model uses attention_dilation or bert-style positions, which transformers' Longformer does not "
            "implement: transformers will load the weights but compute a different function", stacklevel=3)
    tensors = {}
    for name, t in (model.state_dict() if state_dict is None else state_dict).items():
        if name in TIED and _tied(model):
            continue  # stored once under its main name; loaders re-tie it
        tensors[name] = t.detach().to("cpu").contiguous()
    hf = config.to_hf_dict()
    hf["architectures"] = [type(model).__name__]
    atomic_write_json(path / "config.json", hf)
    save_safetensors(path / "model.safetensors", tensors)
