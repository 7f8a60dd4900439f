"""`make_long` / `longformer convert` end to end: the long model equals the source on inputs the
source can take (window covering them), on the real MiniLM (BERT) and on seeded random RoBERTas."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from longformer.cli import main as cli_main  # noqa: E402
from longformer.convert import ConversionError, make_long  # noqa: E402
from longformer.encoder import LongformerForMaskedLM, LongformerModel  # noqa: E402
from longformer.errors import CheckpointFileError  # noqa: E402

TOL = 1e-4
TEXTS = [
    "Tide pools hold small worlds: anemones, limpets and crabs wait for the sea to come back.",
    "A beekeeper checks the hive in early spring, looking for eggs, capped brood and stores of honey. " * 6,
]


@pytest.fixture(scope="module")
def long_minilm(minilm_dir: Path, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("convert") / "minilm-4096"
    make_long(minilm_dir, dst, max_length=4096, window=256)
    return dst


def _minilm_batch(model_dir: Path) -> dict[str, torch.Tensor]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest, not to the file's fixed 128
    enc = tok.encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    assert mask[0].sum() < mask[1].sum() and mask.shape[1] > 64  # padding present, past the tiny-T path
    return {"input_ids": ids, "attention_mask": mask}


def test_minilm_long_equals_bert(minilm_dir: Path, long_minilm: Path):
    batch = _minilm_batch(long_minilm)
    ours = LongformerModel.from_pretrained(long_minilm).eval()
    bert = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        got = ours(**batch)
        want = bert(**batch)
    valid = batch["attention_mask"].bool()
    assert (got.last_hidden_state[valid] - want.last_hidden_state[valid]).abs().max() <= TOL
    assert (got.pooler_output[0] - want.pooler_output[0]).abs().max() <= TOL  # row 0 [CLS] is valid for both
    assert (got.pooler_output - want.pooler_output).abs().max() <= TOL


def test_minilm_long_loads_in_transformers_longformer(minilm_dir: Path, long_minilm: Path):
    # An independent reader of the converted dir: transformers' Longformer, given BERT's position ids
    # (it would otherwise count positions RoBERTa's way).
    batch = _minilm_batch(long_minilm)
    theirs = transformers.LongformerModel.from_pretrained(long_minilm).eval()
    bert = transformers.BertModel.from_pretrained(minilm_dir).eval()
    positions = torch.arange(batch["input_ids"].shape[1])[None].expand_as(batch["input_ids"])
    with torch.no_grad():
        got = theirs(**batch, position_ids=positions).last_hidden_state
        want = bert(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    assert (got[valid] - want[valid]).abs().max() <= TOL


def test_minilm_long_files(minilm_dir: Path, long_minilm: Path):
    src = load_file(str(minilm_dir / "model.safetensors"))
    out = load_file(str(long_minilm / "model.safetensors"))
    old = src["embeddings.position_embeddings.weight"]
    new = out["longformer.embeddings.position_embeddings.weight"]
    assert new.shape == (4096, old.shape[1])
    for i in (0, 511, 512, 2000, 4095):
        assert torch.equal(new[i], old[i % 512])
    assert torch.equal(out["longformer.embeddings.token_type_embeddings.weight"], src["embeddings.token_type_embeddings.weight"])
    assert torch.equal(
        out["longformer.encoder.layer.5.attention.self.value_global.weight"],
        src["encoder.layer.5.attention.self.value.weight"],
    )
    config = json.loads((long_minilm / "config.json").read_text())
    assert config["model_type"] == "longformer"
    assert config["position_embedding_style"] == "bert"
    assert config["attention_window"] == [512] * 6  # two-sided in config.json
    assert config["sep_token_id"] == 102
    assert json.loads((long_minilm / "tokenizer_config.json").read_text())["model_max_length"] == 4096
    assert json.loads((long_minilm / "sentence_bert_config.json").read_text())["max_seq_length"] == 4096
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(long_minilm / "tokenizer.json"))
    assert len(tok.encode("word " * 5000).ids) == 4096  # the file's own truncation now stops at 4096
    assert not (long_minilm / "modules.json").exists()


def test_minilm_long_runs_past_the_source_length(long_minilm: Path):
    model = LongformerModel.from_pretrained(long_minilm).eval()
    ids = torch.randint(1000, 30000, (1, 700), generator=torch.Generator().manual_seed(0))
    ids[0, 0], ids[0, -1] = 101, 102
    with torch.no_grad():
        out = model(ids).last_hidden_state
    assert out.shape == (1, 700, 384) and torch.isfinite(out).all()


def _random_roberta(root: Path, seed: int, with_lm_head: bool, binary: bool = False) -> Path:
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # 64 tokens
    cls = transformers.RobertaForMaskedLM if with_lm_head else transformers.RobertaModel
    model = cls(config).eval()
    path = root / f"roberta-{seed}-{'mlm' if with_lm_head else 'base'}"
    model.save_pretrained(path)
    if binary:
        state = load_file(str(path / "model.safetensors"))
        (path / "model.safetensors").unlink()
        torch.save(state, path / "pytorch_model.bin")
    return path


def _roberta_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (3, 64), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((64, 37, 5)):
        ids[row, 0], ids[row, length - 1] = 0, 2
        ids[row, length:] = 1
        mask[row, length:] = 0
    return ids, mask


@pytest.mark.parametrize("seed, with_lm_head, binary", [(0, False, False), (1, True, False), (2, False, True)])
def test_random_roberta_long_equals_source(tmp_path: Path, seed: int, with_lm_head: bool, binary: bool):
    src = _random_roberta(tmp_path, seed, with_lm_head, binary)
    dst = tmp_path / "long"
    record = make_long(src, dst, max_length=300, attention_window=128)  # w = 64 covers 64 tokens
    assert record.position_rows == 302 and record.window == [64, 64]
    ids, mask = _roberta_batch(seed)
    valid = mask.bool()
    source_cls = transformers.RobertaForMaskedLM if with_lm_head else transformers.RobertaModel
    source = source_cls.from_pretrained(src).eval()
    theirs = transformers.LongformerModel.from_pretrained(dst).eval()
    with torch.no_grad():
        want = source(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        if with_lm_head:
            ours = LongformerForMaskedLM.from_pretrained(dst).eval()
            got_logits = ours(input_ids=ids, attention_mask=mask).logits
            want_logits = source(input_ids=ids, attention_mask=mask).logits
            assert (got_logits[valid] - want_logits[valid]).abs().max() <= TOL
        got = LongformerModel.from_pretrained(dst).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        hf = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got[valid] - want[valid]).abs().max() <= TOL
    assert (hf[valid] - want[valid]).abs().max() <= TOL
    table = load_file(str(dst / "model.safetensors"))["longformer.embeddings.position_embeddings.weight"]
    old = source.state_dict()["roberta.embeddings.position_embeddings.weight" if with_lm_head else "embeddings.position_embeddings.weight"]
    assert torch.equal(table[:2], old[:2])
    for i in (0, 63, 64, 200, 299):
        assert torch.equal(table[2 + i], old[2 + i % 64])


def test_cli_convert_and_overwrite(tmp_path: Path, capsys):
    src = _random_roberta(tmp_path, 3, with_lm_head=False)
    dst = tmp_path / "out"
    assert cli_main(["convert", str(src), str(dst), "--max-length", "256", "--attention-window", "32"]) == 0
    assert "roberta -> longformer, 64 -> 256 tokens (258 position rows), one-sided window 16" in capsys.readouterr().out
    assert json.loads((dst / "config.json").read_text())["attention_window"] == [32, 32]
    assert cli_main(["convert", str(src), str(dst), "--window", "8"]) == 2
    assert "longformer convert: error: dst_dir" in capsys.readouterr().err  # one line on stderr (cli.py)
    assert cli_main(["convert", str(src), str(dst), "--window", "8", "--force"]) == 0
    assert json.loads((dst / "config.json").read_text())["attention_window"] == [16, 16]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", src.name])  # no temp dirs left


def test_bad_sources_give_clear_errors(tmp_path: Path):
    src = _random_roberta(tmp_path, 4, with_lm_head=False)
    with pytest.raises(ConversionError, match="must be even"):
        make_long(src, tmp_path / "a", attention_window=33)
    with pytest.raises(ConversionError, match="max_length must be >= the source's 64"):
        make_long(src, tmp_path / "b", max_length=10)
    with pytest.raises(ConversionError, match="one int or 2 ints"):
        make_long(src, tmp_path / "c", window=[4, 4, 4])
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConversionError, match="unsupported model_type 'gpt2'"):
        make_long(src, tmp_path / "d")
    (src / "config.json").write_text(json.dumps(config))
    (src / "model.safetensors").unlink()
    with pytest.raises(CheckpointFileError, match="no weights in"):  # the one reader's error (longformer._files)
        make_long(src, tmp_path / "e")
    with pytest.raises(ConversionError, match="no config.json"):
        make_long(tmp_path / "e" if (tmp_path / "e").is_dir() else tmp_path, tmp_path / "f")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # failed runs leave nothing behind


def test_unknown_head_is_refused_or_dropped_on_request(tmp_path: Path):
    torch.manual_seed(5)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40,
    )
    src = tmp_path / "bert-cls"
    transformers.BertForSequenceClassification(config).save_pretrained(src)
    with pytest.raises(ConversionError, match=r"classifier\.weight"):
        make_long(src, tmp_path / "out", max_length=100, window=8)
    record = make_long(src, tmp_path / "out", max_length=100, window=8, drop_unknown=True)
    assert {"classifier.weight", "classifier.bias"} <= set(record.dropped_keys)


def test_convert_a_hub_id_from_the_offline_cache(tmp_path: Path, offline_hub, capsys):
    src = _random_roberta(tmp_path, 3, with_lm_head=True)
    offline_hub("acme/roberta-tiny", src)
    assert cli_main(["convert", "acme/roberta-tiny", str(tmp_path / "by-id"), "--max-length", "128"]) == 0
    make_long(src, tmp_path / "local", max_length=128)
    by_id, local = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("by-id", "local"))
    assert sorted(by_id) == sorted(local) and all(torch.equal(by_id[k], local[k]) for k in local)
    assert cli_main(["convert", "acme/roberta-absent", str(tmp_path / "x")]) == 2
    assert "acme/roberta-absent is not in the Hugging Face cache" in capsys.readouterr().err
