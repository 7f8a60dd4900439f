"""Tokenizer files of a checkpoint dir load with `tokenizers` and agree with the reference tokenizers."""
from __future__ import annotations

import json
import shutil

import pytest

from longformer.encoder.tokenizer import load_tokenizer

TEXT = "Longformer reads long documents. It's 4096 tokens long!  Übermäßig lange Sätze."


def test_wordpiece_from_vocab_txt_matches_the_shipped_tokenizer_json(minilm_dir, tmp_path):
    full = load_tokenizer(minilm_dir)
    assert full.truncation is None and full.padding is None  # MiniLM's file truncates at 128: switched off
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    from_vocab = load_tokenizer(tmp_path)
    long_text = TEXT * 40
    assert len(full.encode(long_text).ids) > 128
    assert from_vocab.encode(long_text).ids == full.encode(long_text).ids


def test_byte_level_bpe_from_vocab_and_merges_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([TEXT] * 20, vocab_size=300, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trainer.save_model(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096}))
    ours = load_tokenizer(tmp_path)
    theirs = transformers.RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in (TEXT, "  two spaces", "x"):
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
    assert ours.encode("a", "b").ids == theirs("a", "b")["input_ids"]  # pairs: <s> a </s></s> b </s>


def test_no_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_hub_id_fetches_only_the_tokenizer_files(minilm_dir, offline_hub):
    # a cache holding config and tokenizer but no weights is enough for the tokenizer
    offline_hub("sentence-transformers/all-MiniLM-L6-v2", minilm_dir,
                only=("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    by_id = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    assert by_id.encode(TEXT).ids == load_tokenizer(minilm_dir).encode(TEXT).ids
