import json

import pytest

from longformer.led.config import LEDConfig


def test_hf_config_roundtrip_converts_two_sided_windows():
    transformers = pytest.importorskip("transformers")
    hf = transformers.LEDConfig(encoder_layers=3, d_model=24, encoder_attention_heads=4, decoder_attention_heads=2,
                                 attention_window=[8, 2, 16])
    ours = LEDConfig.from_dict(hf.to_dict())
    assert ours.attention_window == [4, 1, 8]  # one-sided w
    back = ours.to_hf_dict()
    assert back["attention_window"] == [8, 2, 16]
    again = transformers.LEDConfig.from_dict(back)
    assert again.attention_window == [8, 2, 16] and again.d_model == 24 and again.model_type == "led"


def test_int_window_broadcast_and_dilation_written_only_when_used():
    c = LEDConfig(encoder_layers=2, attention_window=3)
    assert c.attention_window == [3, 3]
    assert "attention_dilation" not in c.to_hf_dict()
    c = LEDConfig(encoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, d_model=8,
                  attention_dilation=[1, [1, 2]])
    d = c.to_hf_dict()
    assert d["attention_dilation"] == [1, [1, 2]]
    assert LEDConfig.from_dict(d).attention_dilation == [1, [1, 2]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention_window=[1, 2, 3]), "encoder_layers"),
        (dict(attention_window=-1), ">= 0"),
        (dict(attention_dilation=0), ">= 1"),
        (dict(d_model=10, encoder_attention_heads=3), "multiple"),
        (dict(activation_function="bogus"), "activation_function"),
        (dict(pad_token_id=10**6), "pad_token_id"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LEDConfig(**kwargs)


def test_hf_odd_window_and_wrong_model_type(tmp_path):
    with pytest.raises(ValueError, match="even"):
        LEDConfig.from_dict({"model_type": "led", "encoder_layers": 1, "attention_window": 5})
    with pytest.raises(ValueError, match="longformer convert"):
        LEDConfig.from_dict({"model_type": "bart"})
    path = tmp_path / "config.json"
    full = {**LEDConfig(encoder_layers=1, attention_window=3).to_hf_dict(), "attention_window": [6], "num_beams": 4}
    path.write_text(json.dumps(full))
    c = LEDConfig.from_json_file(path)
    assert c.attention_window == [3] and c.extra["num_beams"] == 4
    assert "num_beams" not in c.to_hf_dict()  # generation keys go to generation_config.json


def test_config_file_without_a_shape_field_is_refused(tmp_path):
    d = LEDConfig(encoder_layers=1, attention_window=3).to_hf_dict()
    del d["d_model"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"config.json lacks required field\(s\) \['d_model'\]"):
        LEDConfig.from_json_file(tmp_path)
