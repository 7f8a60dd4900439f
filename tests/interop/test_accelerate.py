"""`longformer.accelerate` on transformers' own Longformer and LED models: outputs and gradients equal
the untouched model's (fp32), attention probabilities on request, LED generate tokens, dropout, errors."""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import longformer  # noqa: E402
from longformer.interop.swap import AcceleratedSelfAttention  # noqa: E402

VOCAB, PAD, SEP = 77, 1, 2
TOL = 1e-4


def seeded(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (biases and LayerNorms too), so no term hides behind a zero or a one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def longformer_config(**kw):
    args = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
                max_position_embeddings=80, attention_window=[8, 4, 8], hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, type_vocab_size=1, pad_token_id=PAD, bos_token_id=0,
                eos_token_id=SEP, sep_token_id=SEP, layer_norm_eps=1e-5, num_labels=3)
    args.update(kw)
    return transformers.LongformerConfig(**args)


def led_config(**kw):
    args = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40, max_encoder_position_embeddings=96,
                max_decoder_position_embeddings=32, attention_window=[4, 8], dropout=0.0, attention_dropout=0.0,
                activation_dropout=0.0, pad_token_id=PAD, bos_token_id=0, eos_token_id=SEP,
                decoder_start_token_id=SEP)
    args.update(kw)
    return transformers.LEDConfig(**args)


def awkward_batch(T: int = 29, B: int = 4, seed: int = 0):
    """Padding in rows 1 and 2; global tokens at the start, middle, last and a padded position; row 2 has
    none, row 3 has five: every row a different count."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 6:] = 0
    mask[2, T - 13:] = 0
    ids[mask == 0] = PAD
    glob = torch.zeros(B, T, dtype=torch.long)
    glob[0, [0, T // 2, T - 1]] = 1
    glob[1, [1, T - 1]] = 1  # T - 1 is padded: ignored
    glob[3, [0, 3, 4, 17, T - 2]] = 1
    return ids, mask, glob


def pair(cls_name: str, config):
    plain = seeded(getattr(transformers, cls_name)(config))
    fast = longformer.accelerate(copy.deepcopy(plain))
    return plain, fast


def grads(model) -> dict[str, torch.Tensor]:
    # A parameter without a gradient (transformers' unused global projections) counts as zero.
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max abs difference {err:.3g}"


@pytest.mark.parametrize("cls_name", ["LongformerModel", "LongformerForMaskedLM", "LongformerForSequenceClassification",
                                      "LongformerForTokenClassification", "LongformerForQuestionAnswering"])
def test_longformer_outputs_and_gradients_match(cls_name):
    plain, fast = pair(cls_name, longformer_config(num_labels=2 if "Question" in cls_name else 3))
    n_swapped = sum(isinstance(m, AcceleratedSelfAttention) for m in fast.modules())
    assert n_swapped == 3 and fast.state_dict().keys() == plain.state_dict().keys()
    ids, mask, glob = awkward_batch()
    outs = []
    for model in (plain, fast):
        out = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
        main = out[0]  # last_hidden_state or logits / start_logits
        torch.manual_seed(1)
        (main * torch.randn_like(main)).sum().backward()
        outs.append((main.detach(), grads(model)))
    assert_close(outs[1][0], outs[0][0], "output")
    for name, g in outs[0][1].items():
        assert_close(outs[1][1][name], g, f"grad of {name}")


def test_no_global_token_and_no_padding_runs_our_core(monkeypatch):
    import longformer.encoder.attention as ours

    plain, fast = pair("LongformerModel", longformer_config(attention_window=[6, 6, 6]))
    calls = []
    core = ours.sliding_window_attention
    monkeypatch.setattr(ours, "sliding_window_attention", lambda *a, **kw: calls.append(a[3]) or core(*a, **kw))
    ids = torch.randint(3, VOCAB, (2, 40))
    assert_close(fast(input_ids=ids).last_hidden_state, plain(input_ids=ids).last_hidden_state, "output")
    assert calls == [3, 3, 3]  # one band per layer, with the one-sided window


def test_multiple_choice_default_global_tokens():
    plain, fast = pair("LongformerForMultipleChoice", longformer_config())
    ids = torch.randint(3, VOCAB, (2, 3, 21))
    ids[..., 5] = SEP
    ids[..., 6] = SEP
    ids[..., -1] = SEP  # transformers wants exactly three separators per choice
    assert_close(fast(input_ids=ids).logits, plain(input_ids=ids).logits, "logits")


def test_output_attentions_falls_back_to_transformers():
    plain, fast = pair("LongformerModel", longformer_config())
    ids, mask, glob = awkward_batch()
    kw = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob, output_attentions=True)
    a, b = plain(**kw), fast(**kw)
    assert len(b.attentions) == 3 and len(b.global_attentions) == 3
    for x, y in zip(a.attentions + a.global_attentions, b.attentions + b.global_attentions):
        assert_close(y, x, "attention probabilities")
    assert_close(b.last_hidden_state, a.last_hidden_state, "output")


def test_save_pretrained_after_accelerate_reloads_in_transformers(tmp_path):
    plain, fast = pair("LongformerForSequenceClassification", longformer_config())
    fast.save_pretrained(tmp_path)
    again = transformers.LongformerForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, mask, glob = awkward_batch()
    kw = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    assert_close(again(**kw).logits, plain(**kw).logits, "logits")
    assert not any(isinstance(m, AcceleratedSelfAttention) for m in again.modules())


def test_accelerate_is_idempotent_and_returns_the_model():
    model = seeded(transformers.LongformerModel(longformer_config()))
    assert longformer.accelerate(model) is model
    layers = [m for m in model.modules() if isinstance(m, AcceleratedSelfAttention)]
    assert longformer.accelerate(model) is model
    assert [m for m in model.modules() if isinstance(m, AcceleratedSelfAttention)] == layers


def test_training_with_attention_dropout():
    plain, fast = pair("LongformerForSequenceClassification",
                       longformer_config(attention_probs_dropout_prob=0.3))
    ids, mask, glob = awkward_batch()
    labels = torch.tensor([0, 1, 2, 1])
    fast.train()
    torch.manual_seed(3)
    a = fast(input_ids=ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
    torch.manual_seed(3)
    b = fast(input_ids=ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
    assert torch.equal(a.logits, b.logits)  # repeatable under torch.manual_seed
    fast.eval()
    c = fast(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    assert not torch.allclose(a.logits, c.logits)  # dropout did something
    assert_close(c.logits, plain(input_ids=ids, attention_mask=mask, global_attention_mask=glob).logits, "eval logits")
    a.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


def test_led_outputs_gradients_and_generate():
    plain, fast = pair("LEDForConditionalGeneration", led_config())
    assert sum(isinstance(m, AcceleratedSelfAttention) for m in fast.modules()) == 2
    ids, mask, glob = awkward_batch(T=31)
    dec = torch.randint(3, VOCAB, (4, 7))
    outs = []
    for model in (plain, fast):
        out = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob, decoder_input_ids=dec)
        torch.manual_seed(1)
        (out.logits * torch.randn_like(out.logits)).sum().backward()
        outs.append((out.logits.detach(), out.encoder_last_hidden_state.detach(), grads(model)))
    assert_close(outs[1][0], outs[0][0], "logits")
    assert_close(outs[1][1], outs[0][1], "encoder output")
    for name, g in outs[0][2].items():
        assert_close(outs[1][2][name], g, f"grad of {name}")
    for beams in (1, 3):
        kw = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob, max_new_tokens=9, num_beams=beams,
                  do_sample=False, min_new_tokens=9)
        assert torch.equal(fast.generate(**kw), plain.generate(**kw)), f"num_beams={beams}"


def test_led_model_bare():
    plain, fast = pair("LEDModel", led_config(attention_window=[8, 4]))
    ids, mask, glob = awkward_batch(T=23)
    kw = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob, decoder_input_ids=ids[:, :5])
    assert_close(fast(**kw).last_hidden_state, plain(**kw).last_hidden_state, "decoder output")


def test_unsupported_models_get_a_clear_error():
    from longformer.encoder import LongformerConfig, LongformerModel

    ours = LongformerModel(LongformerConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4, intermediate_size=40, max_position_embeddings=80))
    with pytest.raises(TypeError, match="already one of longformer's own models"):
        longformer.accelerate(ours)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=4, intermediate_size=40))
    with pytest.raises(TypeError, match="supports transformers' LongformerModel.*LEDForConditionalGeneration"):
        longformer.accelerate(bert)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecates the gradient_checkpointing name
def test_accelerated_transformers_model_in_trainer_with_checkpointing(tmp_path):
    model = longformer.accelerate(seeded(transformers.LongformerForSequenceClassification(longformer_config())))
    ids, mask, glob = awkward_batch()
    rows = [dict(input_ids=ids[i], attention_mask=mask[i], global_attention_mask=glob[i], labels=torch.tensor(i % 3))
            for i in range(4)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=2,
                                          learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                                          gradient_checkpointing=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    assert model.is_gradient_checkpointing and trainer.evaluate()["eval_loss"] > 0
    trainer.save_model()
    model.eval()
    again = transformers.LongformerForSequenceClassification.from_pretrained(tmp_path).eval()
    kw = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    assert_close(again(**kw).logits, model(**kw).logits, "logits after Trainer")
