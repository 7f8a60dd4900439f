"""Documents in, tokenized and packed into full sequences out (the corpus side of `pretrain-mlm`).

Files: ``.jsonl`` holds one document per line (an object with a ``"text"`` field); any other file
is one UTF-8 document. Every document is tokenized with the model's own tokenizer (no special
tokens), and the documents are joined into one stream with a separator token after each. The stream
is cut into bodies of ``max_length - 2`` tokens, each wrapped as ``[CLS] body [SEP]`` (``<s> ...
</s>`` for RoBERTa vocabularies): every sequence is full except the last, which is padded, and no
token is dropped.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import LongformerError

MASK_NAMES = ("[MASK]", "<mask>")


class PretrainDataError(LongformerError):
    """A corpus file or tokenizer that cannot be used for MLM pretraining."""


@dataclass(frozen=True)
class Vocab:
    """What masking and packing need to know about a tokenizer.

    ``special`` lists every special token id (never masked, never drawn as a random replacement);
    ``size`` is the number of ids random replacements are drawn from (the model's rows that the
    tokenizer can produce)."""

    cls: int
    sep: int
    pad: int
    mask: int
    size: int
    special: tuple[int, ...]


def vocab_of(tokenizer: Any, model_vocab_size: int, pad_token_id: int) -> Vocab:
    """The `Vocab` of a `tokenizers.Tokenizer` whose template adds [CLS]/[SEP] (or <s>/</s>)."""
    wrapped = tokenizer.encode("", add_special_tokens=True).ids
    if len(wrapped) != 2:
        raise PretrainDataError(f"the tokenizer wraps a text in {len(wrapped)} special tokens ({wrapped}); MLM packing "
                                "needs a template that adds exactly a start and an end token ([CLS] x [SEP] or <s> x </s>)")
    mask = next((tokenizer.token_to_id(n) for n in MASK_NAMES if tokenizer.token_to_id(n) is not None), None)
    if mask is None:
        raise PretrainDataError(f"the tokenizer has no mask token (looked for {list(MASK_NAMES)}); MLM needs one")
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if getattr(t, "special", True)}
    special |= {wrapped[0], wrapped[1], mask, pad_token_id}
    size = min(tokenizer.get_vocab_size(with_added_tokens=True), model_vocab_size)
    if any(i >= model_vocab_size for i in special):
        raise PretrainDataError(f"special token ids {sorted(special)} do not fit the model's vocab_size {model_vocab_size}")
    return Vocab(cls=wrapped[0], sep=wrapped[1], pad=pad_token_id, mask=mask, size=size, special=tuple(sorted(special)))


def read_documents(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The documents of ``paths`` in order (see the module docstring for the formats)."""
    docs: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise PretrainDataError(f"{path} is not a file (pass text files or .jsonl files with a 'text' field)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise PretrainDataError(f"{path} is not UTF-8 text ({err})") from None
        if path.suffix != ".jsonl":
            docs.append(text)
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PretrainDataError(f"{path}:{n} is not JSON ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise PretrainDataError(f"{path}:{n} must be an object with a string 'text' field")
            docs.append(row["text"])
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise PretrainDataError(f"no non-empty documents in {[str(p) for p in paths]}")
    return docs


@dataclass
class TokenStream:
    """All documents as one stream: ``ids`` (N,) with ``vocab.sep`` after each document, and
    ``chars`` (N,), the number of characters of the document text each token covers (0 for the
    separators); bits-per-character of masked tokens divides by these."""

    ids: torch.Tensor
    chars: torch.Tensor
    documents: int


def tokenize(tokenizer: Any, docs: Sequence[str], vocab: Vocab) -> TokenStream:
    """Tokenize ``docs`` (no special tokens) and join them with a separator after each."""
    ids: list[int] = []
    chars: list[int] = []
    for enc in tokenizer.encode_batch(list(docs), add_special_tokens=False):
        ids.extend(enc.ids)
        chars.extend(b - a for a, b in enc.offsets)
        ids.append(vocab.sep)
        chars.append(0)
    return TokenStream(torch.tensor(ids, dtype=torch.long), torch.tensor(chars, dtype=torch.long), len(docs))


def pack(stream: torch.Tensor, max_length: int, vocab: Vocab, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a (N,) stream into (S, max_length) sequences ``[CLS] body [SEP]`` with bodies of
    ``max_length - 2`` stream tokens, S = ceil(N / (max_length - 2)); the last is padded.

    Returns (sequences, attention_mask (S, max_length) bool). ``fill`` replaces the value used at
    [CLS], [SEP] and padding (e.g. -100 when packing labels alongside the ids)."""
    if max_length < 3:
        raise PretrainDataError(f"--max-length must be at least 3 ([CLS] token [SEP]), got {max_length}")
    body = max_length - 2
    n = stream.numel()
    if n == 0:
        raise PretrainDataError("nothing to pack: the token stream is empty")
    pad, cls, sep = (vocab.pad, vocab.cls, vocab.sep) if fill is None else (fill, fill, fill)
    rows = -(-n // body)
    flat = torch.full((rows * body,), pad, dtype=stream.dtype)
    flat[:n] = stream
    out = torch.full((rows, max_length), pad, dtype=stream.dtype)
    out[:, 1:-1] = flat.view(rows, body)
    lengths = torch.full((rows,), body)
    lengths[-1] = n - (rows - 1) * body
    out[:, 0] = cls
    out[torch.arange(rows), lengths + 1] = sep
    valid = torch.arange(max_length)[None, :] < (lengths[:, None] + 2)
    return out, valid


def unpack(sequences: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The stream back from `pack` (the body tokens of every row, in order): (N,)."""
    lengths = valid.sum(dim=1) - 2
    pos = torch.arange(sequences.shape[1])[None, :]
    body = (pos >= 1) & (pos <= lengths[:, None])
    return sequences[body]
