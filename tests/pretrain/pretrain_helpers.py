"""Tiny tokenizer, model dirs and corpora for the pretrain-mlm tests (imported by this name: a
module imported as `conftest` would clash with the other test folders' conftests)."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A learnable corpus: sentences from a small grammar, so a tiny model's MLM loss can fall fast.
SUBJECTS = "the cat,the dog,a bird,my friend,the river,a king".split(",")
VERBS = "sees,likes,eats,finds,follows,paints".split(",")
OBJECTS = "the fish,a tree,the moon,an apple,the road,a song".split(",")
WORDS = sorted({w for phrase in SUBJECTS + VERBS + OBJECTS for w in phrase.split()} | {"."})


def build_tokenizer(path: Path) -> None:
    """Word-level, BERT-style template ([CLS] x [SEP]) with character offsets and a [MASK] token."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.enable_truncation(16)  # as saved tokenizers often do: the library must switch it off
    tok.save(str(path / "tokenizer.json"))


def vocab_size() -> int:
    return len(SPECIALS) + len(WORDS)


def build_model_dir(path: Path, *, head: bool = False, max_positions: int = 64, window: int = 4,
                    dropout: float = 0.1, seed: int = 0, tie: bool = True,
                    positions: str = "bert") -> Path:
    """A tiny random Longformer (bert-style positions) saved with its tokenizer: a `LongformerModel`
    without an MLM head (a sentence encoder, as MiniLM made long) unless ``head``."""
    import torch

    from longformer.encoder import LongformerConfig, LongformerForMaskedLM, LongformerModel

    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path)
    config = LongformerConfig(
        vocab_size=vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, max_position_embeddings=max_positions,
        type_vocab_size=2, pad_token_id=0, bos_token_id=2, eos_token_id=3, sep_token_id=3, attention_window=window,
        position_embedding_style=positions, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bert-style positions: a transformers-compatibility note
        (LongformerForMaskedLM if head else LongformerModel)(config).save_pretrained(str(path))
    return path


def corpus(n_docs: int, seed: int, sentences: tuple[int, int] = (3, 12)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ."
                     for _ in range(rng.randint(*sentences))) for _ in range(n_docs)]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    import json

    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path
