"""LongformerConfig: per-layer windows and dilations, the two-sided HF window boundary, source configs."""
from __future__ import annotations

import json

import pytest

from longformer.encoder import LongformerConfig


def small(**kw) -> LongformerConfig:
    args = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=34)
    args.update(kw)
    return LongformerConfig(**args)


def test_int_window_and_dilation_are_broadcast_per_layer():
    c = small(attention_window=5, attention_dilation=2)
    assert c.attention_window == [5, 5, 5]
    assert c.attention_dilation == [2, 2, 2]
    c = small(attention_window=[1, 2, 3], attention_dilation=[1, [1, 3], 2])
    assert c.attention_dilation == [1, [1, 3], 2]


@pytest.mark.parametrize("kw,match", [
    (dict(attention_window=[1, 2]), "num_hidden_layers=3"),
    (dict(attention_window=-1), ">= 0"),
    (dict(attention_dilation=[1, [1, 2, 3], 1]), "num_attention_heads=2"),
    (dict(attention_dilation=0), ">= 1"),
    (dict(position_embedding_style="gpt"), "position_embedding_style"),
    (dict(hidden_size=15), "multiple of num_attention_heads"),
    (dict(hidden_act="gelu_42"), "hidden_act"),
    (dict(pad_token_id=50), "pad_token_id"),
    (dict(num_labels=3, id2label={0: "a", 1: "b"}), "id2label"),
])
def test_bad_fields_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_max_length_depends_on_the_position_style():
    assert small().max_length == 34 - 1 - 1  # roberta: positions start at pad_token_id + 1 = 2
    assert small(position_embedding_style="bert", pad_token_id=0).max_length == 34
    assert LongformerConfig().max_length == 4096  # allenai/longformer-base-4096's 4098 rows


def test_hf_two_sided_windows_are_halved_on_read_and_doubled_on_write(tmp_path):
    hf = {"model_type": "longformer", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
          "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 34,
          "attention_window": 512, "transformers_version": "5.0", "architectures": ["LongformerForMaskedLM"]}
    assert LongformerConfig.from_dict(hf).attention_window == [256] * 3
    c = LongformerConfig.from_dict({**hf, "attention_window": [2, 4, 8]})
    assert c.attention_window == [1, 2, 4]
    assert c.attention_dilation == [1, 1, 1] and c.position_embedding_style == "roberta"  # absent keys
    assert c.to_hf_dict()["attention_window"] == [2, 4, 8]
    with pytest.raises(ValueError, match="even"):
        LongformerConfig.from_dict({**hf, "attention_window": 5})
    c = small(attention_window=[3, 0, 7], attention_dilation=[1, [2, 1], 3], id2label={0: "no", 1: "yes"})
    c.to_json(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["attention_window"] == [6, 0, 14] and written["model_type"] == "longformer"
    assert written["label2id"] == {"no": 0, "yes": 1}
    assert LongformerConfig.from_json(tmp_path) == c
    assert LongformerConfig.from_json(tmp_path / "config.json", num_labels=4).num_labels == 4
    with pytest.raises(TypeError, match="nonsense"):
        LongformerConfig.from_json(tmp_path, nonsense=1)


def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    small(attention_window=[3, 1, 7]).to_json(tmp_path)
    hf = transformers.LongformerConfig.from_pretrained(tmp_path)
    assert hf.attention_window == [6, 2, 14] and hf.num_hidden_layers == 3


def test_from_source_config_for_roberta_and_bert():
    roberta = {"model_type": "roberta", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
               "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 514,
               "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1,
               "layer_norm_eps": 1e-5, "architectures": ["RobertaForMaskedLM"]}
    c = LongformerConfig.from_source_config(roberta, max_length=4096, window=256)
    assert c.max_position_embeddings == 4098 and c.max_length == 4096
    assert c.attention_window == [256, 256] and c.position_embedding_style == "roberta"
    assert c.sep_token_id == 2 and c.architectures is None
    bert = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 512, "pad_token_id": 0,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12}
    c = LongformerConfig.from_source_config(bert, max_length=3000, window=[64, 32], dilation=[1, 2])
    assert c.max_position_embeddings == 3000 == c.max_length and c.position_embedding_style == "bert"
    assert c.attention_window == [64, 32] and c.attention_dilation == [1, 2] and c.pad_token_id == 0
    with pytest.raises(ValueError, match="unsupported source model_type 'gpt2'"):
        LongformerConfig.from_source_config({"model_type": "gpt2"}, max_length=10, window=2)


def test_activation_names_compute_what_transformers_computes():
    import torch

    act2fn = pytest.importorskip("transformers.activations").ACT2FN
    from longformer.linear import ACTIVATIONS

    x = torch.linspace(-8, 8, 1001)
    for name, fn in ACTIVATIONS.items():
        torch.testing.assert_close(fn(x), act2fn[name](x), rtol=1e-6, atol=1e-6, msg=name)


def test_presets():
    c = LongformerConfig.from_name("longformer-large-4096", num_hidden_layers=2)
    assert (c.hidden_size, c.num_attention_heads, c.attention_window, c.max_length) == (1024, 16, [256, 256], 4096)
    assert LongformerConfig.from_name("longformer-base-4096") == LongformerConfig()
    with pytest.raises(ValueError, match="unknown preset"):
        LongformerConfig.from_name("longformer-huge")


def test_keys_missing_from_config_json_take_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    ours = LongformerConfig.from_dict({"model_type": "longformer", "num_hidden_layers": 2})
    theirs = transformers.LongformerConfig(num_hidden_layers=2)
    for name in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
                 "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id", "sep_token_id",
                 "tie_word_embeddings", "initializer_range"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert [2 * w for w in ours.attention_window] == [theirs.attention_window] * 2


def test_source_keys_missing_take_transformers_defaults():
    bert = LongformerConfig.from_source_config({"model_type": "bert", "num_hidden_layers": 1}, max_length=600,
                                               window=8)
    assert (bert.pad_token_id, bert.vocab_size, bert.layer_norm_eps, bert.type_vocab_size) == (0, 30522, 1e-12, 2)
    assert bert.bos_token_id is None and bert.sep_token_id is None
    # A BERT made long with roberta-style positions keeps BERT's padding id.
    shifted = LongformerConfig.from_source_config({"model_type": "bert", "num_hidden_layers": 1}, max_length=600,
                                                  window=8, position_embedding_style="roberta")
    assert shifted.pad_token_id == 0 and shifted.max_position_embeddings == 601
    roberta = LongformerConfig.from_source_config({"model_type": "roberta", "num_hidden_layers": 1},
                                                  max_length=600, window=8)
    assert (roberta.pad_token_id, roberta.sep_token_id, roberta.vocab_size) == (1, 2, 50265)
