"""Loading a checkpoint dir's tokenizer with the `tokenizers` library (no transformers needed).

Layouts: tokenizer.json (any model); vocab.json + merges.txt (RoBERTa/Longformer byte-level BPE, as
allenai/longformer-base-4096 ships); vocab.txt (BERT WordPiece). Truncation and padding stored in a
tokenizer.json are switched off: a long-document model must never cut its input silently.
"""
from __future__ import annotations

import os
from .._files import read_json, resolve_checkpoint


def load_tokenizer(path: str | os.PathLike, revision: str | None = None):
    """A `tokenizers.Tokenizer` that adds the model's special tokens (<s> ... </s> or [CLS] ... [SEP]).

    path: a checkpoint dir or a hub id (only its config and tokenizer files are fetched)."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    path = resolve_checkpoint(path, revision, weights=False)
    config_file = path / "tokenizer_config.json"
    settings = read_json(config_file) if config_file.is_file() else {}
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        bpe = ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt"),
                                    add_prefix_space=bool(settings.get("add_prefix_space", False)), trim_offsets=True)
        tok = bpe._tokenizer  # noqa: SLF001 (the wrapped tokenizers.Tokenizer)
        specials = [settings.get(k, d) for k, d in (("bos_token", "<s>"), ("eos_token", "</s>"),
                                                     ("unk_token", "<unk>"), ("pad_token", "<pad>"),
                                                     ("mask_token", "<mask>"))]
        specials = [s["content"] if isinstance(s, dict) else s for s in specials]
        tok.add_special_tokens(specials)
        bos, eos = specials[0], specials[1]
        tok.post_processor = RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)),
                                               trim_offsets=True, add_prefix_space=False)
    elif (path / "vocab.txt").is_file():
        wp = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=bool(settings.get("do_lower_case", True)),
                                    strip_accents=settings.get("strip_accents"),
                                    handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)))
        tok = wp._tokenizer  # noqa: SLF001
    else:
        raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt")
    tok.no_truncation()
    tok.no_padding()
    return tok
