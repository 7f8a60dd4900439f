"""transformers.Trainer on our task models: train / evaluate / predict with global_attention_mask in the
dataset, gradient checkpointing, and saves that reload in both libraries with equal logits."""
from __future__ import annotations

import pickle
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from longformer.encoder import (LongformerConfig, LongformerForMaskedLM, LongformerForSequenceClassification,  # noqa: E402
                                LongformerForTokenClassification, SequenceClassifierOutput)
from longformer.errors import CheckpointFileError  # noqa: E402
from longformer.interop import SaveConfigCallback  # noqa: E402

VOCAB, PAD = 61, 1


def tiny_config(**kw) -> LongformerConfig:
    args = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=64, attention_window=[2, 4], hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, num_labels=3)
    args.update(kw)
    return LongformerConfig(**args)


class Rows(torch.utils.data.Dataset):
    """Padded rows with a global token in the middle of some (global_attention_mask in every example)."""

    def __init__(self, n: int, T: int = 19, token_labels: bool = False, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, VOCAB, (n, T), generator=g)
        self.mask = torch.ones(n, T, dtype=torch.long)
        for i in range(n):
            self.mask[i, T - i % 5:] = 0
        self.ids[self.mask == 0] = PAD
        self.glob = torch.zeros(n, T, dtype=torch.long)
        self.glob[:, 0] = 1
        self.glob[::2, T // 2] = 1
        # A learnable rule: the label is the first token mod 3 (per token for token classification).
        self.labels = self.ids % 3 if token_labels else self.ids[:, 0] % 3

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return dict(input_ids=self.ids[i], attention_mask=self.mask[i], global_attention_mask=self.glob[i],
                    labels=self.labels[i])


def test_outputs_behave_like_model_output():
    logits, loss = torch.randn(2, 3), torch.tensor(0.5)
    out = SequenceClassifierOutput(loss=loss, logits=logits)
    assert out[0] is loss and out[1] is logits and out["logits"] is logits and out.logits is logits
    assert list(out.keys()) == ["loss", "logits"] and out.to_tuple() == (loss, logits)
    no_loss = SequenceClassifierOutput(logits=logits)
    assert no_loss[0] is logits and "loss" not in no_loss and len(no_loss.to_tuple()) == 1
    with pytest.raises(KeyError):
        no_loss["loss"]
    no_loss.loss = loss  # setting a field makes it a key (appended), as in transformers
    assert no_loss["loss"] is loss and no_loss.to_tuple()[1] is loss
    hf = transformers.modeling_outputs.SequenceClassifierOutput(loss=loss, logits=logits)
    assert list(hf.keys()) == list(out.keys())
    hf_late = transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)
    hf_late.loss = loss
    assert list(hf_late.keys()) == list(no_loss.keys())


def test_forward_takes_transformers_keywords():
    model = LongformerForSequenceClassification(tiny_config()).eval()
    ids = torch.randint(3, VOCAB, (2, 9))
    ref = model(ids).logits
    as_tuple = model(ids, output_attentions=False, output_hidden_states=None, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], ref)
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="head_mask"):
        model(ids, head_mask=torch.ones(2, 4))


def _args(out, **kw):
    args = dict(output_dir=str(out), per_device_train_batch_size=4, per_device_eval_batch_size=5,
                num_train_epochs=2, learning_rate=3e-3, logging_steps=50, save_steps=4, report_to=[], use_cpu=True,
                dataloader_num_workers=0, seed=0)
    return transformers.TrainingArguments(**{**args, **kw})


def _hf_logits(cls_name: str, directory, batch) -> torch.Tensor:
    model = getattr(transformers, cls_name).from_pretrained(directory).eval()
    with torch.no_grad():
        return model(input_ids=batch.ids, attention_mask=batch.mask, global_attention_mask=batch.glob).logits


def test_checkpointing_with_transformers_arguments_matches_plain_gradients():
    torch.manual_seed(0)
    model = LongformerForSequenceClassification(tiny_config(num_hidden_layers=3, attention_window=2)).train()
    batch = Rows(3)
    args = dict(input_ids=batch.ids, attention_mask=batch.mask, global_attention_mask=batch.glob, labels=batch.labels)
    model(**args).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=2)
    calls = []
    inner = model.longformer.encoder.checkpoint_fn
    model.longformer.encoder.checkpoint_fn = lambda *a: calls.append(1) or inner(*a)
    model(**args).loss.backward()
    assert len(calls) == 2 and model.supports_gradient_checkpointing and model.is_gradient_checkpointing  # layers 0, 2
    for g, p in zip(plain, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecates the gradient_checkpointing name
@pytest.mark.parametrize("checkpointing", [None, "gradient_checkpointing", "activation_checkpointing"])
def test_trainer_trains_evaluates_predicts_and_saves(tmp_path, checkpointing):
    torch.manual_seed(0)
    model = LongformerForSequenceClassification(tiny_config())
    train, test = Rows(16), Rows(7, seed=1)
    extra = {checkpointing: True} if checkpointing else {}
    trainer = transformers.Trainer(model=model, args=_args(tmp_path / "run", **extra),
                                   train_dataset=train, eval_dataset=test)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert model.is_gradient_checkpointing == bool(checkpointing)  # Trainer called activation_checkpointing_enable
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] < before  # it learned something
    pred = trainer.predict(test)
    assert pred.predictions.shape == (7, 3) and pred.label_ids.shape == (7,)

    model.eval()
    with torch.no_grad():
        ours = model(test.ids, test.mask, test.glob).logits
    assert torch.allclose(torch.from_numpy(pred.predictions), ours, atol=1e-5)

    trainer.save_model()
    trainer.save_model(tmp_path / "elsewhere")
    # save_model() to its default and to another directory, and Trainer's last checkpoint
    saved = [tmp_path / "run", tmp_path / "elsewhere", tmp_path / "run" / "checkpoint-8"]
    for directory in saved:
        assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()
        again = LongformerForSequenceClassification.from_pretrained(directory)
        with torch.no_grad():
            reloaded = again(test.ids, test.mask, test.glob).logits
        if directory.name != "checkpoint-8":
            assert torch.allclose(reloaded, ours, atol=1e-4)
        hf = _hf_logits("LongformerForSequenceClassification", directory, test)
        assert torch.allclose(hf, reloaded, atol=1e-4), (hf - reloaded).abs().max()


def test_models_built_after_importing_transformers_are_pretrained_models():
    """What makes Trainer call our save_pretrained (compat.pretrained_class): the instance is a
    PreTrainedModel subclass of the same name that behaves as ours (nn.Module's to/train, our methods)."""
    model = LongformerForTokenClassification(tiny_config())
    assert isinstance(model, transformers.PreTrainedModel) and isinstance(model, LongformerForTokenClassification)
    assert type(model).__name__ == "LongformerForTokenClassification"
    assert type(model).to is torch.nn.Module.to and type(model).train is torch.nn.Module.train
    assert type(model).save_pretrained is LongformerForTokenClassification.save_pretrained
    assert model.get_input_embeddings() is model.longformer.embeddings.word_embeddings
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    again = pickle.loads(pickle.dumps(model))  # the class is found again by module and name
    assert type(again) is type(model) and torch.equal(again.classifier.weight, model.classifier.weight)
    assert isinstance(type(model)(tiny_config()), transformers.PreTrainedModel)  # its constructor is ours
    with pytest.raises(TypeError, match="push_to_hub"):
        model.save_pretrained("unused", push_to_hub=True)


def test_trainer_on_a_model_built_before_transformers_saves_weights_only(tmp_path, monkeypatch):
    """A model built while transformers was not imported is a plain nn.Module: Trainer writes only
    model.safetensors (its rule for such modules); SaveConfigCallback completes what it writes."""
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "transformers")
        model = LongformerForTokenClassification(tiny_config())
    assert not isinstance(model, transformers.PreTrainedModel)
    trainer = transformers.Trainer(model=model, args=_args(tmp_path / "run", num_train_epochs=1),
                                   train_dataset=Rows(8, token_labels=True))
    trainer.train()
    trainer.save_model(tmp_path / "bare")
    assert (tmp_path / "bare" / "model.safetensors").is_file() and not (tmp_path / "bare" / "config.json").exists()
    with pytest.raises(CheckpointFileError, match="SaveConfigCallback"):
        LongformerForTokenClassification.from_pretrained(tmp_path / "bare")

    trainer = transformers.Trainer(model=model, args=_args(tmp_path / "run2", num_train_epochs=1),
                                   train_dataset=Rows(8, token_labels=True), callbacks=[SaveConfigCallback()])
    trainer.train()
    trainer.save_model()
    LongformerForTokenClassification.from_pretrained(tmp_path / "run2")
    LongformerForTokenClassification.from_pretrained(tmp_path / "run2" / "checkpoint-2")


def test_masked_lm_with_tied_embeddings_saves_through_trainer(tmp_path):
    """The tied decoder weight is listed once in the state dict (safetensors refuses shared tensors)."""
    torch.manual_seed(0)
    model = LongformerForMaskedLM(tiny_config())
    state = model.state_dict()
    assert "lm_head.decoder.weight" not in state and "longformer.embeddings.word_embeddings.weight" in state
    again = LongformerForMaskedLM(tiny_config())
    again.load_state_dict(state, strict=True)  # the tied names are put back on load
    assert again.lm_head.decoder.weight is again.longformer.embeddings.word_embeddings.weight
    data = Rows(8, token_labels=True)
    data.labels = data.ids.clone()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path / "run", num_train_epochs=1),
                                   train_dataset=data, callbacks=[SaveConfigCallback()])
    trainer.train()
    trainer.save_model()
    model.eval()
    with torch.no_grad():
        ours = model(data.ids, data.mask, data.glob).logits
        reloaded = LongformerForMaskedLM.from_pretrained(tmp_path / "run")(data.ids, data.mask, data.glob).logits
    hf = _hf_logits("LongformerForMaskedLM", tmp_path / "run", data)
    assert torch.allclose(reloaded, ours, atol=1e-4) and torch.allclose(hf, ours, atol=1e-4)
