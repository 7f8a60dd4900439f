"""A model without an MLM head gets one tied to its word embeddings, with a warning naming the new keys."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from pretrain_helpers import build_model_dir

from longformer.pretrain.mlm import MaskedTokenLoss, load_mlm_model

NEW_KEYS = ["lm_head.bias", "lm_head.dense.bias", "lm_head.dense.weight", "lm_head.layer_norm.bias",
            "lm_head.layer_norm.weight"]


@pytest.mark.parametrize("tie", [True, False])
def test_new_head_is_tied_and_named(tmp_path: Path, tie: bool) -> None:
    path = build_model_dir(tmp_path / "enc", tie=tie)
    with pytest.warns(UserWarning, match="has no MLM head") as caught:
        model, new = load_mlm_model(path, seed=3)
    assert new == NEW_KEYS
    ours = [str(w.message) for w in caught if "has no MLM head" in str(w.message)]
    assert all(k in ours[0] for k in NEW_KEYS) and "word_embeddings" in ours[0]
    emb = model.longformer.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.weight is emb and model.config.tie_word_embeddings
    # the encoder's weights are the checkpoint's, untouched
    from safetensors.torch import load_file

    saved = load_file(str(path / "model.safetensors"))
    assert torch.equal(emb, saved["embeddings.word_embeddings.weight"])
    # same seed, same head (every DDP process builds the same one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again, _ = load_mlm_model(path, seed=3)
    assert torch.equal(again.lm_head.dense.weight, model.lm_head.dense.weight)
    # still one tensor after an optimizer step, and saved once
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(5, 20, (2, 9))
    loss, count = MaskedTokenLoss(model)(ids, torch.ones_like(ids, dtype=torch.bool), ids)
    (loss / count).backward()
    opt.step()
    assert model.lm_head.decoder.weight is model.longformer.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path / "saved")
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        reloaded, new_again = load_mlm_model(tmp_path / "saved")
    assert new_again == [] and not [w for w in later if "lm_head" in str(w.message)]
    assert torch.equal(reloaded.lm_head.dense.weight, model.lm_head.dense.weight)
    assert reloaded.lm_head.decoder.weight is reloaded.longformer.embeddings.word_embeddings.weight


def test_checkpoint_with_head_loads_as_is(tmp_path: Path) -> None:
    path = build_model_dir(tmp_path / "mlm", head=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, new = load_mlm_model(path)
    assert new == [] and not [w for w in caught if "lm_head" in str(w.message)]


def test_loss_equals_full_logits_cross_entropy(tmp_path: Path) -> None:
    model, _ = load_mlm_model(build_model_dir(tmp_path / "m", head=True, dropout=0.0))
    ids = torch.randint(5, 20, (2, 11))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 8:] = False
    labels = torch.full_like(ids, -100)
    labels[0, [1, 4]] = ids[0, [1, 4]]
    labels[1, 3] = 7
    loss, count = MaskedTokenLoss(model)(ids, valid, labels)
    logits = model(ids, attention_mask=valid).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
    assert int(count) == 3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
