"""Reading a source checkpoint dir and writing the converted one: config, weights, tokenizer files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .._files import read_config, read_json, read_state_dict, weight_files
from .errors import ConversionError

# model_type -> the family whose key names and position offsets it uses.
SUPPORTED_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
# Copied as they are (apart from the length caps updated below). Weights and config.json are
# rewritten; sentence-transformers' modules.json is NOT copied, because it would make that library
# load the dir with transformers' LongformerModel, which cannot do BERT-style positions.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "sentence_bert_config.json",  # sentence-transformers' max_seq_length lives here
    "1_Pooling/config.json",  # how sentence embeddings are pooled (mean, for MiniLM)
)


def read_source_config(src: Path) -> dict[str, Any]:
    """The source config.json, checked to be a plain BERT or RoBERTa encoder."""
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"no config.json in {src} (expected a Hugging Face BERT or RoBERTa checkpoint dir)")
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        hint = " (it is already a Longformer)" if model_type == "longformer" else ""
        raise ConversionError(
            f"unsupported model_type {model_type!r} in {path}{hint}; `longformer convert` supports {sorted(SUPPORTED_TYPES)}"
        )
    style = config.get("position_embedding_type", "absolute")
    if style != "absolute":
        raise ConversionError(
            f"position_embedding_type={style!r} in {path} is not supported; only learned absolute positions "
            "can be copied out to a longer length"
        )
    for flag in ("is_decoder", "add_cross_attention"):
        if config.get(flag):
            raise ConversionError(f"{flag}=true in {path}: only bidirectional encoders can be made long")
    missing = [f for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings") if f not in config]
    if missing:
        raise ConversionError(f"{path} lacks required fields {missing}")
    return config


def load_source_weights(src: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of the checkpoint in ``src``; returns (state dict, file name(s) read)."""
    layout, files = weight_files(src)
    state = read_state_dict(src)
    return state, layout if len(files) == 1 and files[0].name == layout else f"{layout} ({len(files)} shards)"


def check_destination(dst: Path, force: bool) -> None:
    """A conversion writes into a new or empty dir; replacing a non-empty one takes ``force``."""
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"dst_dir {str(dst)!r} exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise ConversionError(f"dst_dir {str(dst)!r} is not empty; pass force=True (--force) to replace it")


def sep_token_id(src: Path) -> int | None:
    """The id of the separator token ([SEP] / </s>) from the tokenizer files, if they name one."""
    name = None
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        if (src / file).is_file():
            value = read_json(src / file).get("sep_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                name = value
                break
    if name is None:
        return None
    if (src / "tokenizer.json").is_file():
        tok = read_json(src / "tokenizer.json")
        for added in tok.get("added_tokens", []):
            if added.get("content") == name:
                return int(added["id"])
        vocab = tok.get("model", {}).get("vocab")
        if isinstance(vocab, dict) and name in vocab:
            return int(vocab[name])
    if (src / "vocab.txt").is_file():
        lines = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
        if name in lines:
            return lines.index(name)
    return None


def longformer_config(
    source: dict[str, Any], max_length: int, windows: list[int], has_lm_head: bool, sep_id: int | None
) -> dict[str, Any]:
    """The converted model's config.json dict (Hugging Face Longformer layout: two-sided windows).

    ``windows`` are one-sided. ``position_embedding_style`` (bert for BERT sources) tells our loader
    whether positions count from 0 or from pad_token_id + 1, as transformers' Longformer always does.
    """
    from ..encoder import LongformerConfig

    source = dict(source)
    if sep_id is not None:  # BERT configs do not name [SEP]; the QA head needs it
        source["sep_token_id"] = sep_id
    try:
        config = LongformerConfig.from_source_config(source, max_length=max_length, window=windows)
    except ValueError as err:
        raise ConversionError(f"cannot make a Longformer config from the source config.json: {err}") from None
    config.architectures = ["LongformerForMaskedLM" if has_lm_head else "LongformerModel"]
    return config.to_hf_dict()


def copy_tokenizer_files(src: Path, dst: Path, max_length: int) -> list[str]:
    """Copy the tokenizer (and pooling) files, raising every length cap to ``max_length`` tokens."""
    copied = []
    for name in TOKENIZER_FILES:
        source = src / name
        if not source.is_file():
            continue
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "tokenizer_config.json":
            data = read_json(source)
            data["model_max_length"] = max_length
            if "max_len" in data:  # the pre-2020 name of the same cap
                data["max_len"] = max_length
            target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        elif name == "tokenizer.json":
            data = read_json(source)
            if isinstance(data.get("truncation"), dict):
                data["truncation"]["max_length"] = max_length
            target.write_text(json.dumps(data, ensure_ascii=False))
        elif name == "sentence_bert_config.json":
            data = read_json(source)
            data["max_seq_length"] = max_length
            target.write_text(json.dumps(data, indent=2) + "\n")
        else:
            shutil.copyfile(source, target)
        copied.append(name)
    return copied
