"""The model side of MLM pretraining: loading a model with a (tied) MLM head, and the masked-token loss.

A sentence encoder (MiniLM made long by `longformer convert`: a `LongformerModel` checkpoint with
no ``lm_head.*`` keys) gets a new head whose decoder IS the word-embedding matrix, as BERT's and
RoBERTa's MLM heads are; its other keys are initialised and named in a warning.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .._files import read_tensor_file, resolve_checkpoint, weight_files
from ..encoder import LongformerForMaskedLM
from .masking import IGNORE

WORD_EMBEDDINGS = "longformer.embeddings.word_embeddings.weight"
# The decoder's weight and bias are the word embeddings and lm_head.bias themselves when tied.
TIED_NAMES = ("lm_head.decoder.weight", "lm_head.decoder.bias")


def load_mlm_model(path: str | os.PathLike, *, seed: int = 0, impl: str = "auto") -> tuple[LongformerForMaskedLM, list[str]]:
    """``LongformerForMaskedLM.from_pretrained(path)`` (a dir or hub id), with the MLM head tied to
    the word embeddings.

    A checkpoint without ``lm_head.*`` keys gets a new head initialised from ``seed`` (the same on
    every process), tied even if its config says ``tie_word_embeddings: false``; the loader warns
    naming the new keys, and so does this function. Returns (model in train mode, the newly
    initialised keys: empty when the checkpoint had a head).
    """
    directory = resolve_checkpoint(path)
    has_head = any(k.startswith("lm_head.") for k in checkpoint_keys(directory))
    torch.manual_seed(seed)
    model = LongformerForMaskedLM.from_pretrained(directory, impl=impl,
                                                  **({} if has_head else {"tie_word_embeddings": True}))
    if has_head:
        return model.train(), []
    if model.lm_head.decoder.weight is not model.longformer.embeddings.word_embeddings.weight:
        raise RuntimeError("internal error: the new MLM head's decoder is not tied to the word embeddings")
    new = sorted(k for k in model.state_dict() if k.startswith("lm_head.") and k not in TIED_NAMES)
    warnings.warn(f"{path} has no MLM head: created one with its decoder tied to {WORD_EMBEDDINGS}; newly "
                  f"initialised keys (seed {seed}): {', '.join(new)}", stacklevel=2)
    return model.train(), new


def checkpoint_keys(directory: str | os.PathLike) -> list[str]:
    """The tensor names stored in a checkpoint dir (safetensors headers only: no weights are read)."""
    from safetensors import safe_open

    keys: list[str] = []
    for file in weight_files(directory)[1]:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                keys.extend(f.keys())
        else:
            keys.extend(read_tensor_file(file))
    return keys


class MaskedTokenLoss(nn.Module):
    """Wraps a `LongformerForMaskedLM`; forward returns the SUM of the cross-entropy (nats) over the
    labelled positions and their count, computing the vocabulary projection only there (15% of the
    tokens: at T=4096 and a 30k vocab the full (B, T, V) logits would be ~0.5 GB per sequence).

    Wrapping the whole step in one module lets DistributedDataParallel see every parameter use.
    No token is global (the paper's MLM pretraining uses local attention only).
    """

    def __init__(self, model: LongformerForMaskedLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask (bool), labels (-100 = not scored): (B, T). Returns (loss sum, count)."""
        hidden = self.model.longformer(input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, C)
        scored = labels != IGNORE
        logits = self.model.lm_head(hidden[scored])  # (M, V)
        loss = F.cross_entropy(logits.float(), labels[scored], reduction="sum")
        return loss, scored.sum()
