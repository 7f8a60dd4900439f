"""BART -> LED: on inputs BART can read, with a window covering them, the LED computes what the BART did."""
import json

import pytest
import torch

from longformer.convert.errors import ConversionError
from longformer.convert import bart_to_led
from longformer.led import from_pretrained


def hf_bart(seed=0, **overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BartConfig(**{**dict(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=2,
                                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40,
                                               decoder_ffn_dim=40, max_position_embeddings=24, dropout=0.0,
                                               init_std=0.2), **overrides})
    model = transformers.BartForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)
    return model


def test_led_equals_bart(tmp_path):
    transformers = pytest.importorskip("transformers")
    bart = hf_bart()
    bart.save_pretrained(tmp_path / "bart")
    (tmp_path / "bart" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 24}))
    record = bart_to_led(tmp_path / "bart", tmp_path / "led", max_length=100, window=23)
    led = from_pretrained(tmp_path / "led")
    assert led.config.max_encoder_position_embeddings == 100 and led.config.max_decoder_position_embeddings == 24
    assert record.window == [23, 23] and "tokenizer_config.json" in record.tokenizer_files
    assert json.loads((tmp_path / "led" / "tokenizer_config.json").read_text())["model_max_length"] == 100

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 61, (2, 24), generator=g)  # BART's whole position table
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    dec = torch.randint(3, 61, (2, 10), generator=g)
    with torch.no_grad():
        ref = bart(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        got = led(ids, mask, None, dec).logits  # global first token: global projections are copies
        got_local = led(ids, mask, torch.zeros_like(ids), dec).logits
    assert (ref - got).abs().max() <= 1e-4 and (ref - got_local).abs().max() <= 1e-4
    # generation too (BART's forced_eos_token_id default travels into generation_config.json)
    for settings in (dict(max_new_tokens=12, num_beams=3, no_repeat_ngram_size=2),):
        assert led.generate(ids, mask, **settings).tolist() == bart.generate(input_ids=ids, attention_mask=mask,
                                                                             **settings).tolist()
    # positions past BART's table repeat its learned rows; the decoder table drops BART's 2 offset rows
    bart_enc = bart.model.encoder.embed_positions.weight
    assert torch.equal(led.led.encoder.embed_positions.weight[24 + 5], bart_enc[2 + 5])
    assert torch.equal(led.led.decoder.embed_positions.weight, bart.model.decoder.embed_positions.weight[2:])
    # and transformers reads the converted dir as an LED with the same logits (no global token there)
    hf_led = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path / "led").eval()
    with torch.no_grad():
        hf_logits = hf_led(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (hf_logits - ref).abs().max() <= 1e-4


def test_conversion_errors(tmp_path):
    hf_bart(scale_embedding=True).save_pretrained(tmp_path / "scaled")
    with pytest.raises(ConversionError, match="scale_embedding"):
        bart_to_led(tmp_path / "scaled", tmp_path / "out")
    hf_bart().save_pretrained(tmp_path / "bart")
    with pytest.raises(ConversionError, match="even"):
        bart_to_led(tmp_path / "bart", tmp_path / "out", attention_window=5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        bart_to_led(tmp_path / "bart", tmp_path / "busy")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ConversionError, match="model_type 'bart'"):
        bart_to_led(tmp_path / "t5", tmp_path / "o")


def test_convert_command_turns_bart_into_led(tmp_path, capsys):
    """`longformer convert` dispatches on the source's model_type: a BART dir becomes an LED dir."""
    from longformer.cli import main

    bart = hf_bart(seed=3)
    bart.save_pretrained(tmp_path / "bart")
    assert main(["convert", str(tmp_path / "bart"), str(tmp_path / "led"), "--max-length", "96", "--window", "23"]) == 0
    assert "bart -> led" in capsys.readouterr().out
    led = from_pretrained(tmp_path / "led")
    assert led.config.max_encoder_position_embeddings == 96
    ids = torch.randint(3, 61, (1, 20), generator=torch.Generator().manual_seed(1))
    dec = ids[:, :7]
    with torch.no_grad():
        ref = bart(input_ids=ids, decoder_input_ids=dec).logits
        got = led(ids, None, torch.zeros_like(ids), dec).logits
    assert (ref - got).abs().max() <= 1e-4
