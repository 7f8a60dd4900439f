"""`SaveConfigCallback`: makes what transformers.Trainer saves for a model built before transformers was
imported a complete checkpoint.

Trainer calls `save_pretrained` only on transformers' `PreTrainedModel` (and PEFT's `PeftModel`), tested
with isinstance; any other module gets `model.safetensors` from its state dict and no config.json. Our
models built after transformers is imported are `PreTrainedModel`s (encoder/compat.py,
`pretrained_class`) and need nothing; one built before is a plain nn.Module. The weights Trainer writes
already use transformers' names, so only config.json is missing; this callback writes it, the same file
our `save_pretrained` writes, which both our `from_pretrained` and transformers' class of the same name
read.

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[SaveConfigCallback()])

It writes config.json into args.output_dir when training starts (so `trainer.save_model()` to the
default directory is complete) and into every `checkpoint-N` directory Trainer saves.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from transformers import TrainerCallback


def write_config(model, directory: str | os.PathLike) -> None:
    """Write `model.config` as config.json (the file our save_pretrained writes) into `directory`."""
    config = getattr(model, "config", None)
    if not hasattr(config, "to_hf_dict"):
        raise TypeError(f"SaveConfigCallback works with longformer's models; got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dataclasses.replace(config, architectures=[type(model).__name__]).to_json(directory)


def _unwrap(model):
    """Our model under DDP / torch.compile / PEFT wrappers (PEFT saves its own adapter config)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
        else:
            return model


class SaveConfigCallback(TrainerCallback):
    """Writes config.json beside the weights transformers.Trainer saves (see the module docstring)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None and _is_ours(model):
            write_config(_unwrap(model), args.output_dir)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None and _is_ours(model):
            write_config(_unwrap(model), Path(args.output_dir) / f"checkpoint-{state.global_step}")


def _is_ours(model) -> bool:
    # A PeftModel writes its adapter_config.json itself; config.json of the base is not what it reloads.
    return hasattr(getattr(_unwrap(model), "config", None), "to_hf_dict")
