"""Bad input gets a clear error naming the argument; boundaries and defaults of the forward pass."""
from __future__ import annotations

import pytest
import torch

from longformer.encoder import (LongformerConfig, LongformerForMultipleChoice, LongformerForQuestionAnswering,
                                LongformerModel)


@pytest.fixture(scope="module")
def model():
    config = LongformerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=22, attention_window=[2, 3],
                              type_vocab_size=2, hidden_dropout_prob=0.0)
    torch.manual_seed(0)
    return LongformerModel(config).eval()


def ids(B=2, T=9):
    return torch.randint(3, 50, (B, T))


def test_length_limit_names_the_maximum_and_convert(model):
    assert model.config.max_length == 20
    assert model(ids(T=20)).last_hidden_state.shape == (2, 20, 16)
    with pytest.raises(ValueError, match=r"input length 21 exceeds .* maximum of 20 tokens.*longformer convert"):
        model(ids(T=21))


@pytest.mark.parametrize("bad", [50, -1, 1000])
def test_token_ids_outside_the_vocabulary(model, bad):
    x = ids()
    x[1, 4] = bad
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 50\)"):
        model(x)


@pytest.mark.parametrize("arg,value,match", [
    ("attention_mask", torch.ones(2, 8), r"attention_mask must have shape \(B, T\)=\(2, 9\)"),
    ("global_attention_mask", torch.ones(9), r"global_attention_mask must have shape"),
    ("attention_mask", torch.full((2, 9), 2), "only 0 and 1"),
    ("token_type_ids", torch.full((2, 9), 2), r"token_type_ids must lie in \[0, 2\)"),
    ("position_ids", torch.full((2, 9), 22), r"position_ids must lie in \[0, 22\)"),
    ("token_type_ids", torch.zeros(2, 9), "integer tensor"),
])
def test_bad_masks_and_ids_are_named(model, arg, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model(ids(), **{arg: value})


def test_exactly_one_of_ids_and_embeddings(model):
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="exactly one"):
        model(ids(), inputs_embeds=torch.zeros(2, 9, 16))
    with pytest.raises(ValueError, match="hidden_size=16"):
        model(inputs_embeds=torch.zeros(2, 9, 8))


def test_embeddings_input_equals_ids_input_without_padding(model):
    x = ids()
    emb = model.embeddings.word_embeddings(x)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=emb).last_hidden_state, model(x).last_hidden_state)


def test_padding_in_any_row_does_not_change_the_other_tokens(model):
    """The same sequence alone and padded inside a batch gives the same outputs for its tokens."""
    x = ids(B=1, T=7)
    batch = torch.full((2, 12), 1)
    batch[0, :7], batch[1] = x[0], ids(B=1, T=12)[0]
    mask = (torch.arange(12) < 7).long().expand(2, 12).clone()
    mask[1] = 1
    g = torch.zeros(2, 12, dtype=torch.long)
    g[:, 2] = 1
    with torch.no_grad():
        alone = model(x, global_attention_mask=g[:1, :7]).last_hidden_state
        padded = model(batch, attention_mask=mask, global_attention_mask=g).last_hidden_state
    torch.testing.assert_close(padded[0, :7], alone[0])


def test_question_answering_needs_a_separator():
    config = LongformerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=22, attention_window=2)
    qa = LongformerForQuestionAnswering(config).eval()
    x = ids()
    x[0, 3] = config.sep_token_id
    with pytest.raises(ValueError, match=r"rows \[1\] of input_ids have no separator"):
        qa(x)
    x[1, 5] = config.sep_token_id
    out = qa(x)
    assert out.start_logits.shape == out.end_logits.shape == (2, 9)
    with pytest.raises(ValueError, match="num_labels=2"):
        LongformerForQuestionAnswering(LongformerConfig(**{**config.__dict__, "num_labels": 3}))


def test_multiple_choice_shapes_and_loss():
    config = LongformerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=22, attention_window=2)
    mc = LongformerForMultipleChoice(config).eval()
    x = torch.randint(3, 50, (2, 3, 10))
    x[..., 4] = config.sep_token_id
    out = mc(x, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0
    with pytest.raises(ValueError, match="num_choices"):
        mc(x[:, 0])
