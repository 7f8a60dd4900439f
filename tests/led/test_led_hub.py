"""Hugging Face LED dirs in and out: transformers' files load here, ours load in transformers."""
import json

import pytest
import torch

from longformer.led import CheckpointError, from_pretrained
from longformer.led.modeling import LEDForConditionalGeneration, LEDModel
from longformer.errors import CheckpointFileError
from longformer.led.config import LEDConfig

from led_helpers import batch, hf_led


def _logits(model, hf: bool):
    ids, mask, glob = batch()
    dec = torch.tensor([[2, 7, 9, 11]] * 3)
    with torch.no_grad():
        if hf:
            return model(input_ids=ids, attention_mask=mask, global_attention_mask=glob, decoder_input_ids=dec).logits
        return model(ids, mask, glob, dec).logits


@pytest.mark.parametrize("tie", [True, False])
def test_load_transformers_dir_and_save_back(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    hf = hf_led(tie_word_embeddings=tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = LEDForConditionalGeneration.from_pretrained(tmp_path / "hf")
    ref = _logits(hf, True)
    assert (_logits(ours, False) - ref).abs().max() <= 1e-4
    if tie:
        assert ours.lm_head.weight is ours.led.shared.weight is ours.led.encoder.embed_tokens.weight
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert (_logits(again, True) - ref).abs().max() <= 1e-6
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["attention_window"] == [4, 8]


def test_pytorch_model_bin_with_every_tied_name(tmp_path):
    hf = hf_led()
    (tmp_path / "d").mkdir()
    hf.config.save_pretrained(tmp_path / "d")
    torch.save(hf.state_dict(), tmp_path / "d" / "pytorch_model.bin")  # old layout: all names, bias included
    ours = from_pretrained(tmp_path / "d")
    assert (_logits(ours, False) - _logits(hf, True)).abs().max() <= 1e-4


def test_led_model_checkpoint_loads_with_or_without_head(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_led()
    hf.led.save_pretrained(tmp_path / "base")  # LEDModel: no "led." prefix, no head, no bias
    lm = from_pretrained(tmp_path / "base")
    assert torch.equal(lm.final_logits_bias, torch.zeros_like(lm.final_logits_bias))  # transformers' default
    ref = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    assert (_logits(lm, False) - _logits(ref, True)).abs().max() <= 1e-4
    base = from_pretrained(tmp_path / "base", cls=LEDModel)
    assert isinstance(base, LEDModel)


def test_mismatched_checkpoints_list_their_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = hf_led()
    hf.save_pretrained(tmp_path / "d")
    path = tmp_path / "d" / "model.safetensors"
    sd = load_file(path)
    sd.pop("led.encoder.layers.1.fc1.bias")
    sd["led.encoder.layers.0.fc2.weight"] = sd["led.encoder.layers.0.fc2.weight"][:, :5].contiguous()
    sd["led.encoder.layers.0.extra.weight"] = torch.zeros(2)
    save_file(sd, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path / "d")
    text = str(err.value)
    assert "1 missing key(s):\n    led.encoder.layers.1.fc1.bias" in text
    assert "1 unexpected key(s):\n    led.encoder.layers.0.extra.weight" in text
    assert "led.encoder.layers.0.fc2.weight: checkpoint (32, 5) vs model (32, 40)" in text


def test_missing_files_and_wrong_model_type(tmp_path):
    with pytest.raises(CheckpointFileError, match="has no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "led", "encoder_layers": 1, "decoder_layers": 1,
                                                      "attention_window": 4}))
    with pytest.raises(CheckpointFileError, match=r"lacks required field\(s\) \['vocab_size', 'd_model'"):
        from_pretrained(tmp_path)
    LEDConfig(encoder_layers=1, decoder_layers=1, attention_window=2).save(tmp_path)
    with pytest.raises(CheckpointFileError, match="no weights in .*model.safetensors"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match="unsupported model_type 't5'"):
        from_pretrained(tmp_path)


def test_hub_id_loads_both_classes_from_the_offline_cache(tmp_path, offline_hub):
    hf_led().save_pretrained(tmp_path / "hf")
    offline_hub("acme/led-tiny", tmp_path / "hf")
    local = from_pretrained(tmp_path / "hf")
    by_id = from_pretrained("acme/led-tiny")
    assert (_logits(by_id, False) - _logits(local, False)).abs().max() == 0
    assert isinstance(LEDModel.from_pretrained("acme/led-tiny"), LEDModel)
    with pytest.raises(CheckpointFileError, match="acme/led-absent is not in the Hugging Face cache"):
        LEDForConditionalGeneration.from_pretrained("acme/led-absent")
