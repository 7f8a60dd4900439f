"""Reading documents, tokenizing and packing into full sequences."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretrain_helpers import build_tokenizer

from longformer.encoder import load_tokenizer
from longformer.pretrain.data import PretrainDataError, Vocab, pack, read_documents, tokenize, unpack, vocab_of

VOCAB = Vocab(cls=2, sep=3, pad=0, mask=4, size=50, special=(0, 1, 2, 3, 4))


@pytest.mark.parametrize("n,length", [(1, 3), (7, 3), (100, 12), (101, 12), (98, 12), (5, 64)])
def test_pack_keeps_every_token(n: int, length: int) -> None:
    stream = torch.randint(5, 50, (n,))
    seqs, valid = pack(stream, length, VOCAB)
    body = length - 2
    assert seqs.shape == (-(-n // body), length)
    assert torch.equal(unpack(seqs, valid), stream)  # nothing lost, nothing added, order kept
    assert bool((seqs[:, 0] == VOCAB.cls).all())
    assert bool(valid[:-1].all())  # every sequence but the last is full
    assert bool((seqs[:-1, -1] == VOCAB.sep).all())
    last = int(valid[-1].sum())
    assert last == n - (len(seqs) - 1) * body + 2 and seqs[-1, last - 1] == VOCAB.sep
    assert bool((seqs[-1, last:] == VOCAB.pad).all())
    labels, _ = pack(stream, length, VOCAB, fill=-100)
    assert bool((labels[~valid] == -100).all()) and bool((labels[:, 0] == -100).all())


def test_tokenize_separates_documents(tmp_path: Path) -> None:
    build_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    vocab = vocab_of(tok, 1000, 0)
    assert (vocab.cls, vocab.sep, vocab.mask) == (2, 3, 4) and set(vocab.special) == {0, 1, 2, 3, 4}
    stream = tokenize(tok, ["the cat sees a tree .", "my friend eats"], vocab)
    assert stream.ids.tolist().count(vocab.sep) == 2 and stream.ids[6] == vocab.sep and stream.ids[-1] == vocab.sep
    assert stream.chars.tolist() == [3, 3, 4, 1, 4, 1, 0, 2, 6, 4, 0]
    seqs, valid = pack(stream.ids, 8, vocab)
    assert torch.equal(unpack(seqs, valid), stream.ids)


def test_read_documents_formats_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one whole document\n\nwith two paragraphs")
    (tmp_path / "b.jsonl").write_text('{"text": "first"}\n\n{"text": "second"}\n')
    assert read_documents([tmp_path / "a.txt", tmp_path / "b.jsonl"]) == [
        "one whole document\n\nwith two paragraphs", "first", "second"]
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(PretrainDataError, match=r"bad.jsonl:1 must be an object with a string 'text'"):
        read_documents([tmp_path / "bad.jsonl"])
    with pytest.raises(PretrainDataError, match="is not a file"):
        read_documents([tmp_path / "missing.txt"])
    with pytest.raises(PretrainDataError, match="at least 3"):
        pack(torch.arange(5, 9), 2, VOCAB)
