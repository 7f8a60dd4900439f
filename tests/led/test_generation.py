"""generate(): the same tokens as transformers' LEDForConditionalGeneration.generate, an encoder that runs
once, an incremental decoder whose cache gives the teacher-forced logits, and clear errors."""
import json

import pytest
import torch

from longformer.led.config import LEDConfig
from longformer.led.decoder import DecoderCache
from longformer.led.generation import resolve_settings
from longformer.led import from_pretrained
from longformer.led.modeling import LEDForConditionalGeneration

from led_helpers import batch, hf_led


@pytest.fixture(scope="module")
def pair():
    hf = hf_led(seed=3)
    ours = LEDForConditionalGeneration(LEDConfig.from_dict(hf.config.to_dict())).eval()
    ours.load_state_dict(hf.state_dict())
    return hf, ours


SETTINGS = [
    dict(max_new_tokens=12),
    dict(max_new_tokens=12, no_repeat_ngram_size=2, min_length=9),
    dict(max_new_tokens=15, num_beams=4),
    dict(max_new_tokens=15, num_beams=4, length_penalty=2.0, early_stopping=True),
    dict(max_new_tokens=15, num_beams=4, length_penalty=0.5, early_stopping=False, no_repeat_ngram_size=3),
    dict(max_new_tokens=15, num_beams=4, length_penalty=-0.5, early_stopping="never", min_length=10),
    dict(max_new_tokens=10, num_beams=3, num_return_sequences=2, forced_bos_token_id=0, forced_eos_token_id=2,
         repetition_penalty=1.5),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_same_tokens_as_transformers(pair, settings):
    hf, ours = pair
    ids, mask, glob = batch()
    expected = hf.generate(input_ids=ids, attention_mask=mask, global_attention_mask=glob, **settings)
    got = ours.generate(ids, mask, glob, **settings)
    assert got.tolist() == expected.tolist()
    if "length_penalty" not in settings:
        assert got.shape[1] > 5  # not a trivially short output


def test_sampling_draws_the_same_tokens_for_the_same_seed(pair):
    hf, ours = pair
    ids, mask, glob = batch()
    for settings in (dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
                     dict(do_sample=True, num_beams=2, top_k=10)):
        torch.manual_seed(11)
        expected = hf.generate(input_ids=ids, attention_mask=mask, global_attention_mask=glob, max_new_tokens=8,
                               **settings)
        torch.manual_seed(11)
        got = ours.generate(ids, mask, glob, max_new_tokens=8, **settings)
        assert got.tolist() == expected.tolist()


def test_encoder_runs_once_and_decoder_is_incremental(pair):
    _, ours = pair
    ids, mask, glob = batch()
    calls = {"enc": 0, "dec_lengths": []}
    h1 = ours.led.encoder.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    h2 = ours.led.decoder.register_forward_pre_hook(lambda m, args, kw: calls["dec_lengths"].append(args[0].shape[1]),
                                                    with_kwargs=True)
    try:
        out = ours.generate(ids, mask, glob, max_new_tokens=6, num_beams=3)
    finally:
        h1.remove()
        h2.remove()
    assert calls["enc"] == 1
    assert calls["dec_lengths"] == [1] * (out.shape[1] - 1)  # one new token per step


def test_cache_gives_teacher_forced_logits(pair):
    _, ours = pair
    ids, mask, glob = batch()
    dec = torch.randint(3, 71, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = ours(ids, mask, glob, dec).logits
        enc = ours.led.encode(ids, mask, glob)
        cache = DecoderCache()
        steps = [ours.logits(ours.led.decoder(dec[:, :4], enc.last_hidden_state, enc.attention_mask, cache=cache))]
        for t in range(4, 9):
            steps.append(ours.logits(ours.led.decoder(dec[:, t:t + 1], None, enc.attention_mask, cache=cache)))
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("start", [2, None], ids=["with-start-token", "start-falls-back-to-bos"])
def test_checkpoint_generation_defaults_are_used(tmp_path, start):
    transformers = pytest.importorskip("transformers")
    hf = hf_led(seed=4)
    hf.save_pretrained(tmp_path)
    defaults = {"num_beams": 3, "no_repeat_ngram_size": 2, "max_length": 11, "length_penalty": 1.5,
                "early_stopping": True, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    if start is not None:
        defaults["decoder_start_token_id"] = start
    (tmp_path / "generation_config.json").write_text(json.dumps(defaults))
    hf = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path).eval()
    ours = from_pretrained(tmp_path)
    ids, mask, glob = batch()
    expected = hf.generate(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    got = ours.generate(ids, mask, glob)
    assert got.tolist() == expected.tolist()
    assert expected.shape[1] <= 11 and got[0, 0] == (0 if start is None else start)


def test_generation_errors(pair):
    _, ours = pair
    ids, mask, glob = batch()
    with pytest.raises(ValueError, match="past the decoder's position table.*max_decoder_position_embeddings=48"):
        ours.generate(ids, mask, glob, max_new_tokens=49)
    assert resolve_settings(ours, 48, max_new_tokens=48).max_length == 49  # exactly fills the table
    with pytest.raises(ValueError, match="num_return_sequences"):
        ours.generate(ids, mask, glob, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="temperature"):
        ours.generate(ids, mask, glob, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="early_stopping"):
        ours.generate(ids, mask, glob, num_beams=2, early_stopping="sometimes")
    with pytest.raises(TypeError, match="unknown generation settings"):
        ours.generate(ids, mask, glob, beams=2)
    with pytest.raises(ValueError, match="max_encoder_position_embeddings"):
        ours.generate(torch.full((1, 97), 5))


def test_another_configuration_through_from_pretrained(tmp_path):
    # different depth/width/heads/activation, untied embeddings, two-sided windows 4/6/12, int eos list
    transformers = pytest.importorskip("transformers")
    hf = hf_led(seed=9, vocab_size=53, d_model=24, encoder_layers=3, decoder_layers=1, encoder_attention_heads=3,
                decoder_attention_heads=4, attention_window=[4, 6, 12], activation_function="gelu_new",
                tie_word_embeddings=False, eos_token_id=[2], max_decoder_position_embeddings=30)
    hf.save_pretrained(tmp_path)
    hf = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path).eval()
    ours = from_pretrained(tmp_path)
    ids, mask, glob = batch(T=36, vocab=53)
    dec = torch.tensor([[2, 4, 8, 15, 16, 23]] * 3)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob, decoder_input_ids=dec).logits
        b = ours(ids, mask, glob, dec).logits
    assert (a - b).abs().max() <= 1e-4
    for settings in (dict(max_new_tokens=14), dict(max_new_tokens=14, num_beams=4)):
        expected = hf.generate(input_ids=ids, attention_mask=mask, global_attention_mask=glob, **settings)
        assert ours.generate(ids, mask, glob, **settings).tolist() == expected.tolist()


def test_unimplemented_checkpoint_settings_are_refused(tmp_path):
    hf_led(seed=4).save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"bad_words_ids": [[5]], "num_beam_groups": 1,
                                                                  "decoder_start_token_id": 2}))
    ours = from_pretrained(tmp_path)
    ids, mask, glob = batch()
    with pytest.raises(ValueError, match=r"\{'bad_words_ids': \[\[5\]\]\}.*does not implement"):
        ours.generate(ids, mask, glob, max_new_tokens=3)
    ours.generation_defaults.pop("bad_words_ids")
    assert ours.generate(ids, mask, glob, max_new_tokens=3).shape == (3, 4)
