"""Tiny models and data files for the fine-tuning tests (built here: no downloads, a few KB each).

A module of its own, imported by this unique name: `from conftest import` resolved to another
folder's conftest.py when several test folders ran in one session."""
from __future__ import annotations

import json
import random
from pathlib import Path


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega red green blue cyan where who what is the of paris rome berlin madrid city "
         "capital river nile ocean big small cat dog . , ?").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def build_tokenizer(path: Path) -> None:
    """A word-level tokenizer with BERT-style [CLS] a [SEP] b [SEP] templates and character offsets."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    # Like many saved tokenizers (MiniLM's), carry a truncation and padding setting the library must undo.
    tok.enable_truncation(16)
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.save(str(path / "tokenizer.json"))


def build_model_dir(path: Path, *, max_positions: int = 128, window: int = 4, layers: int = 2,
                    dropout: float = 0.0, seed: int = 0) -> Path:
    """Save a tiny randomly initialised Longformer (the 'pretrained' model of the tests) + tokenizer."""
    import torch

    from longformer.encoder import LongformerConfig, LongformerForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path)
    config = LongformerConfig(
        vocab_size=len(SPECIALS) + len(set(WORDS)), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_positions, type_vocab_size=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        sep_token_id=3, attention_window=window, position_embedding_style="bert")
    torch.manual_seed(seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bert-style positions: a transformers-compatibility note
        LongformerForSequenceClassification(config).save_pretrained(str(path))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def classification_rows(n: int, seed: int, min_words: int = 3, max_words: int = 40) -> list[dict]:
    """A learnable task: label 'pos' iff the text contains 'red' (a keyword placed anywhere)."""
    rng = random.Random(seed)
    filler = [w for w in WORDS[:24] if w != "red"]
    rows = []
    for i in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(min_words, max_words))]
        label = "pos" if i % 2 == 0 else "neg"
        if label == "pos":
            words.insert(rng.randrange(len(words) + 1), "red")
        rows.append({"id": f"c{i}", "text": " ".join(words), "label": label})
    return rows
