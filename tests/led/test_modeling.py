"""LED forward against transformers' LED (same weights): logits, encoder states, loss; bad input."""
import pytest
import torch

from longformer.led.config import LEDConfig
from longformer.led.modeling import LEDForConditionalGeneration, first_token_global

from led_helpers import batch, hf_led


def ours_from(hf) -> LEDForConditionalGeneration:
    model = LEDForConditionalGeneration(LEDConfig.from_dict(hf.config.to_dict())).eval()
    model.load_state_dict(hf.state_dict())
    return model


@pytest.mark.parametrize("T, windows", [(29, [4, 8]), (40, [8, 4]), (8, [16, 16])])
def test_logits_match_transformers_with_padding_and_global(T, windows):
    hf = hf_led(attention_window=windows)
    ours = ours_from(hf)
    ids, mask, glob = batch(T=T)
    dec = torch.randint(3, 71, (3, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob, decoder_input_ids=dec)
        b = ours(ids, mask, glob, dec)
    assert (a.logits - b.logits).abs().max() <= 1e-4
    # padded positions too: transformers zeroes a padded query's attention, and so do we
    assert (a.encoder_last_hidden_state - b.encoder_last_hidden_state).abs().max() <= 1e-4


def test_loss_and_default_decoder_inputs_match_transformers():
    hf = hf_led()
    ours = ours_from(hf)
    ids, mask, glob = batch()
    labels = torch.randint(3, 71, (3, 6))
    labels[1, 4:] = -100
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
        b = ours(ids, mask, glob, labels=labels)
        # no decoder inputs and no labels: both shift input_ids right
        c = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob).logits
        d = ours(ids, mask, glob).logits
    assert abs(float(a.loss) - float(b.loss)) <= 1e-5
    assert (c - d).abs().max() <= 1e-4


def test_windows_that_do_not_divide_each_other():
    # transformers pads to a multiple of the largest window, so T=31 with windows 6 and 10 (two-sided)
    # fails there; T=30 is a multiple of both and works. Ours runs at 31 and agrees with itself at 30.
    hf = hf_led(attention_window=[6, 10])
    ours = ours_from(hf)
    ids, mask, glob = batch(B=1, T=30)
    dec = torch.tensor([[2, 5, 9]])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob, decoder_input_ids=dec).logits
        out30 = ours(ids, mask, glob, dec).logits
        ids31 = torch.cat([ids, torch.tensor([[1]])], 1)
        mask31 = torch.cat([mask, torch.tensor([[0]])], 1)
        glob31 = torch.cat([glob, torch.tensor([[0]])], 1)
        out31 = ours(ids31, mask31, glob31, dec).logits
        with pytest.raises((AssertionError, RuntimeError, ValueError)):  # transformers 5.x: AssertionError
            hf(input_ids=ids31, attention_mask=mask31, global_attention_mask=glob31, decoder_input_ids=dec)
    assert (ref - out30).abs().max() <= 1e-4
    assert (out31 - out30).abs().max() <= 1e-4


def test_default_global_token_is_first_real_token():
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    g = first_token_global(mask, 3, 4, torch.device("cpu"))
    assert g.tolist() == [[True, False, False, False], [False, False, True, False], [False] * 4]
    hf = hf_led()
    ours = ours_from(hf)
    ids, amask, _ = batch()
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    with torch.no_grad():
        a = ours.led.encode(ids, amask, None).last_hidden_state
        b = ours.led.encode(ids, amask, glob).last_hidden_state
        c = ours.led.encode(ids, amask, torch.zeros_like(ids)).last_hidden_state
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_dilation_and_odd_windows_reach_the_attention_layers():
    cfg = LEDConfig(vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, attention_window=[3, 5],
                    attention_dilation=[1, [1, 2]], max_encoder_position_embeddings=64, max_decoder_position_embeddings=8)
    model = LEDForConditionalGeneration(cfg).eval()
    attn = [layer.self_attn.longformer_self_attn for layer in model.led.encoder.layers]
    assert [a.window for a in attn] == [3, 5]
    assert attn[0].dilation == 1 and tuple(attn[1].dilation) == (1, 2)
    out = model(torch.randint(3, 50, (2, 37)), decoder_input_ids=torch.tensor([[2], [2]]))
    assert out.logits.shape == (2, 1, 50) and torch.isfinite(out.logits).all()


def test_bad_input_errors():
    hf = hf_led()
    ours = ours_from(hf)
    ids, mask, glob = batch()
    dec = torch.tensor([[2]] * 3)
    with pytest.raises(ValueError, match="max_encoder_position_embeddings=96"):
        ours(torch.full((1, 97), 5), decoder_input_ids=dec[:1])
    with pytest.raises(ValueError, match=r"input_ids holds ids outside the vocabulary \[0, 71\)"):
        ours(torch.full((1, 5), 71), decoder_input_ids=dec[:1])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, T\)=\(3, 29\), got \(3, 28\)"):
        ours(ids, mask[:, :-1], glob, dec)
    with pytest.raises(ValueError, match="global_attention_mask must hold only 0 and 1"):
        ours(ids, mask, glob * 2, dec)
    with pytest.raises(ValueError, match="decoder_input_ids holds ids outside"):
        ours(ids, mask, glob, dec - 3)
    with pytest.raises(ValueError, match="decoder positions"):
        ours(ids, mask, glob, torch.full((3, 49), 5))
    with pytest.raises(TypeError, match="integer token ids"):
        ours(ids.float(), mask, glob, dec)


def test_gradients_match_transformers():
    hf = hf_led(attention_window=[4, 8])
    ours = ours_from(hf)
    ids, mask, glob = batch()
    labels = torch.randint(3, 71, (3, 5), generator=torch.Generator().manual_seed(7))
    hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob, labels=labels).loss.backward()
    ours(ids, mask, glob, labels=labels).loss.backward()
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        ref = hf_params[name].grad
        assert p.grad is not None and ref is not None, name
        assert (p.grad - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max())), name


def test_output_is_a_model_output_with_loss_then_logits():
    """transformers.Trainer reads `outputs["loss"]` / `outputs[0]` and takes the other keys as predictions."""
    ours = ours_from(hf_led())
    ids, mask, glob = batch()
    labels = ids[:, :7].clone()
    out = ours(ids, mask, glob, labels=labels)
    assert list(out.keys()) == ["loss", "logits", "last_hidden_state", "encoder_last_hidden_state"]
    assert out[0] is out.loss is out["loss"] and out[1] is out.logits and len(out.to_tuple()) == 4
    assert list(ours(ids, mask, glob, decoder_input_ids=labels).keys())[0] == "logits"  # no labels: no loss key


def test_seq2seq_trainer_trains_and_evaluates(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = ours_from(hf_led())
    ids, mask, glob = batch(B=6)
    rows = [dict(input_ids=ids[i], attention_mask=mask[i], global_attention_mask=glob[i], labels=ids[i, :6])
            for i in range(6)]
    args = transformers.Seq2SeqTrainingArguments(str(tmp_path), per_device_train_batch_size=3, num_train_epochs=2,
                                                 learning_rate=3e-3, report_to=[], use_cpu=True, save_strategy="no")
    trainer = transformers.Seq2SeqTrainer(model=ours.train(), args=args, train_dataset=rows, eval_dataset=rows)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before
