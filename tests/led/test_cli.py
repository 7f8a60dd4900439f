"""`longformer summarize`: file mode, JSON-lines batch mode with resume, and its errors."""
import argparse
import json

import pytest
import torch

from led_helpers import hf_led
from longformer.led import cli
from longformer.led import from_pretrained

WORDS = [f"w{i}" for i in range(67)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors

    path = tmp_path_factory.mktemp("led-cli")
    hf_led(seed=5, max_encoder_position_embeddings=40).save_pretrained(path)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>"])
    tok.save(str(path / "tokenizer.json"))
    return path


def run(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["summarize", *argv])
    return args.func(args)


def expected(model_dir, texts, **settings):
    model = from_pretrained(model_dir)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    out = []
    for text in texts:
        ids = torch.tensor([tok.encode(text).ids])
        gen = model.generate(ids, **settings)
        out.append(tok.decode(gen[0].tolist(), skip_special_tokens=True).strip())
    return out


def test_files(model_dir, tmp_path, capsys):
    texts = [" ".join(WORDS[i:i + 20]) for i in (0, 7)]
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(text)
    assert run(["--model", str(model_dir), *map(str, files), "--num-beams", "2", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    for f, summary in zip(files, expected(model_dir, texts, num_beams=2, max_new_tokens=6)):
        assert f"== {f} ==\n{summary}\n" in printed


def test_jsonl_resumes(model_dir, tmp_path):
    texts = [" ".join(WORDS[i:i + 15]) for i in (0, 3, 9)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    dst = tmp_path / "out.jsonl"
    # a previous run finished line 0 and was cut while writing line 1
    (tmp_path / "out.jsonl.partial").write_text(json.dumps({"id": 0, "summary": "kept"}) + "\n" + '{"id": 1, "su')
    assert run(["--model", str(model_dir), "--jsonl", str(src), "--output", str(dst), "--batch-size", "2",
                "--max-new-tokens", "5"]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and rows[0]["summary"] == "kept"
    assert [r["summary"] for r in rows[1:]] == expected(model_dir, texts[1:], max_new_tokens=5)
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_errors(model_dir, tmp_path, capsys):
    long_doc = tmp_path / "long.txt"
    long_doc.write_text(" ".join(WORDS[:50]))
    assert run(["--model", str(model_dir), str(long_doc)]) == 2
    assert "52 tokens, but the model reads at most 40" in capsys.readouterr().err
    assert run(["--model", str(model_dir), str(long_doc), "--truncate", "--max-new-tokens", "3"]) == 0
    assert run(["--model", str(model_dir), "--jsonl", str(long_doc)]) == 2
    assert run(["--model", str(model_dir), str(tmp_path / "nope.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_model_by_hub_id(model_dir, tmp_path, capsys, offline_hub):
    offline_hub("acme/tiny-led", model_dir)
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(WORDS[:12]))
    assert run(["--model", "acme/tiny-led", str(doc), "--max-new-tokens", "4"]) == 0
    assert f"== {doc} ==\n{expected(model_dir, [doc.read_text()], max_new_tokens=4)[0]}\n" in capsys.readouterr().out
