"""The state-dict steps of `longformer convert`, on small hand-made tensors."""
from __future__ import annotations

import pytest
import torch

from longformer.convert import ConversionError
from longformer.convert.weights import (
    BERT_TO_LONGFORMER,
    ROBERTA_TO_LONGFORMER,
    add_global_projections,
    convert_state_dict,
    extend_positions,
    invert,
    rename_keys,
)


def test_roberta_positions_keep_two_rows_and_tile_the_rest():
    table = torch.randn(514, 8)  # RoBERTa: 512 tokens + rows 0 and 1
    new = extend_positions(table, offset=2, max_length=4096)
    assert new.shape == (4098, 8)
    assert torch.equal(new[:2], table[:2])
    for i in (0, 1, 511, 512, 513, 1500, 4095):
        assert torch.equal(new[2 + i], table[2 + i % 512]), i


def test_bert_positions_start_at_zero():
    table = torch.randn(512, 4)
    new = extend_positions(table, offset=0, max_length=1300)  # not a multiple of 512
    assert new.shape == (1300, 4)
    for i in (0, 511, 512, 1023, 1024, 1299):
        assert torch.equal(new[i], table[i % 512]), i


def test_positions_refuse_to_shrink():
    with pytest.raises(ConversionError, match="max_length must be >= the source's 512"):
        extend_positions(torch.randn(514, 4), offset=2, max_length=100)


@pytest.mark.parametrize("table", [BERT_TO_LONGFORMER, ROBERTA_TO_LONGFORMER])
def test_renames_are_reversible(table):
    state = {old + "x.weight" if old.endswith(".") else old: torch.zeros(1) for old in table}
    there = rename_keys(state, table)
    back = rename_keys(there, invert(table))
    assert list(back) == list(state)


def test_unknown_keys_are_listed():
    state = {"bert.embeddings.word_embeddings.weight": torch.zeros(1), "classifier.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"classifier\.weight"):
        rename_keys(state, BERT_TO_LONGFORMER)


def test_global_projections_are_copies():
    stem = "longformer.encoder.layer.3.attention.self."
    state = {stem + f"{w}.{k}": torch.randn(4, 4) if k == "weight" else torch.randn(4) for w in ("query", "key", "value") for k in ("weight", "bias")}
    out = add_global_projections(state)
    for w in ("query", "key", "value"):
        for k in ("weight", "bias"):
            assert torch.equal(out[stem + f"{w}_global.{k}"], state[stem + f"{w}.{k}"])
            assert out[stem + f"{w}_global.{k}"].data_ptr() != state[stem + f"{w}.{k}"].data_ptr()


def test_bare_base_model_keys_and_buffers():
    layer = "encoder.layer.0.attention.self."
    state = {
        "embeddings.position_embeddings.weight": torch.randn(10, 2),
        "embeddings.position_ids": torch.arange(10)[None],
        "cls.seq_relationship.weight": torch.randn(2, 2),
        **{layer + f"{w}.weight": torch.randn(2, 2) for w in ("query", "key", "value")},
    }
    out, dropped = convert_state_dict(state, "bert", max_length=25, position_offset=0)
    assert set(dropped) == {"embeddings.position_ids", "cls.seq_relationship.weight"}
    assert out["longformer.embeddings.position_embeddings.weight"].shape == (25, 2)
    assert "longformer.encoder.layer.0.attention.self.key_global.weight" in out
