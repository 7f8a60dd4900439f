"""State-dict surgery for making a short BERT/RoBERTa checkpoint long (allenai's recipe, paper §5).

Three plain steps, each a small pure function on a ``{name: tensor}`` dict:
1. rename the source keys to Hugging Face Longformer names with a readable, reversible table;
2. repeat the learned position rows out to the new length (RoBERTa keeps its two leading rows);
3. copy the local q/k/v projections into the global ones.
"""
from __future__ import annotations

import re

import torch

from .errors import ConversionError

# Longest matching prefix wins. Each table is one-to-one, so `invert(table)` maps back exactly.
BERT_TO_LONGFORMER: dict[str, str] = {
    "bert.embeddings.": "longformer.embeddings.",
    "bert.encoder.": "longformer.encoder.",
    "bert.pooler.": "longformer.pooler.",
    # BERT's MLM head computes dense -> gelu -> LayerNorm -> decoder, as Longformer's lm_head does.
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
    "cls.predictions.decoder.": "lm_head.decoder.",
    "cls.predictions.bias": "lm_head.bias",
}
ROBERTA_TO_LONGFORMER: dict[str, str] = {
    "roberta.embeddings.": "longformer.embeddings.",
    "roberta.encoder.": "longformer.encoder.",
    "roberta.pooler.": "longformer.pooler.",
    "lm_head.": "lm_head.",  # RoBERTa's and Longformer's MLM heads have the same layout
}
RENAMES: dict[str, dict[str, str]] = {"bert": BERT_TO_LONGFORMER, "roberta": ROBERTA_TO_LONGFORMER}

# Keys with no Longformer counterpart, dropped on purpose (and reported), never silently.
DROPPED: dict[str, str] = {
    r"(^|\.)embeddings\.position_ids$": "a constant buffer (0..n-1), rebuilt by the model",
    r"(^|\.)embeddings\.token_type_ids$": "a constant zero buffer, rebuilt by the model",
    r"^cls\.seq_relationship\.": "BERT's next-sentence head; Longformer has none",
}

# TF-era BERT checkpoints name LayerNorm parameters gamma/beta.
LEGACY_SUFFIXES: dict[str, str] = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
POSITION_KEY = "longformer.embeddings.position_embeddings.weight"
_LAYER_QKV = re.compile(r"^(longformer\.encoder\.layer\.\d+\.attention\.self\.)(query|key|value)\.(weight|bias)$")


def invert(table: dict[str, str]) -> dict[str, str]:
    """The reverse rename table (Longformer names back to the source's)."""
    inverse = {new: old for old, new in table.items()}
    if len(inverse) != len(table):
        raise ValueError("rename table is not one-to-one")
    return inverse


def rename_keys(state: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename every key by the longest prefix in ``table``; unknown keys raise, listing them all."""
    prefixes = sorted(table, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            unknown.append(name)
            continue
        out[table[prefix] + name[len(prefix):]] = tensor
    if unknown:
        raise ConversionError(
            f"{len(unknown)} checkpoint keys have no Longformer counterpart: {sorted(unknown)[:20]}"
            + (" ..." if len(unknown) > 20 else "")
            + f". Known prefixes: {prefixes}. Task heads other than the MLM head (e.g. a classifier) "
            "cannot be carried over; convert the base model, or pass drop_unknown=True "
            "(--drop-unknown) to drop them explicitly."
        )
    return out


def drop_known_extras(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Remove buffers and heads listed in DROPPED; returns (kept, {dropped key: reason})."""
    kept, dropped = {}, {}
    for name, tensor in state.items():
        reason = next((why for pattern, why in DROPPED.items() if re.search(pattern, name)), None)
        if reason is None:
            kept[name] = tensor
        else:
            dropped[name] = reason
    return kept, dropped


def add_model_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A bare base-model checkpoint (``embeddings.*``, as ``BertModel.save_pretrained`` writes) gets
    the ``bert.``/``roberta.`` prefix that model-with-head checkpoints carry, so one table serves both."""
    bare = ("embeddings.", "encoder.", "pooler.")
    if any(name.startswith(prefix + ".") for name in state):
        return dict(state)
    return {(f"{prefix}.{n}" if n.startswith(bare) else n): t for n, t in state.items()}


def extend_positions(table: torch.Tensor, offset: int, max_length: int) -> torch.Tensor:
    """Repeat the learned position rows so the model takes ``max_length`` tokens.

    Args:
        table: (P, hidden) learned position embeddings. Rows ``[:offset]`` are not positions of
            tokens (RoBERTa: offset 2, rows 0 and 1 belong to padding); rows ``[offset:]`` are the
            ``P - offset`` learned positions.
        offset: 0 for BERT, ``pad_token_id + 1`` (= 2) for RoBERTa.
        max_length: tokens the long model takes (``>= P - offset``).

    Returns:
        (max_length + offset, hidden): rows ``[:offset]`` kept, then the learned rows tiled, so
        new row ``offset + i`` equals old row ``offset + i % (P - offset)``. Copying rather than
        random init is what makes the long model work at once (paper Table 6).
    """
    learned = table[offset:]
    n = learned.shape[0]
    if n < 1:
        raise ConversionError(f"position table has {table.shape[0]} rows, no learned rows after offset {offset}")
    if max_length < n:
        raise ConversionError(f"max_length must be >= the source's {n} positions, got {max_length}")
    reps = -(-max_length // n)  # ceil
    tiled = learned.repeat(reps, 1)[:max_length]
    return torch.cat([table[:offset], tiled], dim=0).contiguous()


def add_global_projections(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy each layer's local query/key/value into query_global/key_global/value_global."""
    out = dict(state)
    copied = 0
    for name, tensor in state.items():
        match = _LAYER_QKV.match(name)
        if match:
            stem, which, kind = match.groups()
            global_name = f"{stem}{which}_global.{kind}"
            if global_name in state:
                raise ConversionError(f"source already has global projections ({global_name}); is it a Longformer?")
            out[global_name] = tensor.clone()
            copied += 1
    if copied == 0:
        raise ConversionError("found no attention.self.{query,key,value} weights to copy into the global projections")
    return out


def _modern_suffix(name: str) -> str:
    for old, new in LEGACY_SUFFIXES.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name.replace("layer_norm.gamma", "layer_norm.weight").replace("layer_norm.beta", "layer_norm.bias")


def convert_state_dict(
    state: dict[str, torch.Tensor],
    source_type: str,
    max_length: int,
    position_offset: int,
    drop_unknown: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Source (BERT/RoBERTa) state dict -> Longformer state dict. Returns (state, {dropped: reason})."""
    table = RENAMES[source_type]
    state, dropped = drop_known_extras(state)
    state = add_model_prefix(state, source_type)
    if drop_unknown:
        prefixes = tuple(table)
        for name in [n for n in state if not n.startswith(prefixes)]:
            dropped[name] = "no Longformer counterpart (dropped by request)"
            del state[name]
    state = rename_keys(state, table)
    state = {_modern_suffix(k): v for k, v in state.items()}
    if POSITION_KEY not in state:
        raise ConversionError(f"checkpoint has no position table ({POSITION_KEY} after renaming)")
    state[POSITION_KEY] = extend_positions(state[POSITION_KEY], position_offset, max_length)
    return add_global_projections(state), dropped
