"""`longformer export` / `export_onnx`: onnxruntime equals eager PyTorch at lengths other than the traced
one, the graph has no T x T value, bad input gets one error line, `torch.export` keeps working.

The default suite exports ONE tiny LongformerModel (2 layers, per-layer windows 3 and 8, dilations
(1, 2) and 1); every task model and the LED encoder are `-m slow`.
"""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from export_helpers import (MAX_LENGTH, assert_close, batch, quadratic_values, run_onnx, save_encoder,  # noqa: E402
                            save_led)

from longformer import cli  # noqa: E402
from longformer.export import export_onnx  # noqa: E402

TRACE = 64


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model_dir = save_encoder(root / "encoder", "LongformerModel")
    result = export_onnx(model_dir, root / "encoder.onnx", trace_length=TRACE)
    return model_dir, result


def _eager(model_dir, inputs, cls_name="LongformerModel"):
    import longformer.encoder as encoder

    model = getattr(encoder, cls_name).from_pretrained(model_dir)
    with torch.no_grad():
        return model(**inputs)


def test_result(encoder_export):
    model_dir, result = encoder_export
    assert result.output_names == ("last_hidden_state", "pooler_output")
    assert result.input_names == ("input_ids", "attention_mask", "global_attention_mask")
    assert result.opset == 18 and result.checked_lengths and result.checked_lengths[0] != TRACE
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert [p.name for p in result.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    import onnx

    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == list(result.input_names)
    assert [o.name for o in model.graph.output] == list(result.output_names)
    assert {o.domain for o in model.graph.node} <= {"", "ai.onnx"}, "only standard ONNX operators"


@pytest.mark.parametrize("T,global_counts", [
    (37, (0, 1, 5)),  # shorter than traced; no, one, several global tokens
    (517, (3, 0, 40)),  # longer than traced, many globals in one row
    (2, (1, 0)),  # the shortest input the graph takes
    (MAX_LENGTH, (2, 9)),  # the longest
])
def test_onnxruntime_equals_eager(encoder_export, T, global_counts):
    model_dir, result = encoder_export
    inputs = batch(T, global_counts, seed=T)
    got = run_onnx(result.path, inputs)
    want = _eager(model_dir, inputs)
    assert_close(got["last_hidden_state"], want.last_hidden_state, f"last_hidden_state at T={T}")
    assert_close(got["pooler_output"], want.pooler_output, f"pooler_output at T={T}")


def test_no_sequence_squared_value(encoder_export):
    _, result = encoder_export
    assert quadratic_values(result.path) == {}


def test_scan_catches_dense_attention(tmp_path):
    """The scan above can fail: the dense reference's T x T scores are found."""
    from longformer import sliding_window_attention

    class Dense(torch.nn.Module):
        def forward(self, input_ids):
            x = input_ids[..., None].float().expand(*input_ids.shape, 4)[:, None]  # (B, 1, T, 4)
            return sliding_window_attention(x, x, x, 2, impl="reference")

    ids = torch.ones(2, 16, dtype=torch.long)
    seq = torch.export.Dim("sequence", min=2, max=4096)
    torch.onnx.export(Dense(), (ids,), str(tmp_path / "dense.onnx"), dynamo=True, input_names=["input_ids"],
                      dynamic_shapes={"input_ids": {0: torch.export.Dim("batch"), 1: seq}})
    assert quadratic_values(tmp_path / "dense.onnx")


def test_torch_export_of_the_encoder_keeps_working(tmp_path):
    """`torch.export` with the default kernel (the compiled custom op on the CPU), and with impl="export"
    at a dynamic length."""
    from longformer.encoder import LongformerModel

    class Hidden(torch.nn.Module):  # the output dataclass is no pytree: return its tensor
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, global_attention_mask):
            return self.model(input_ids, attention_mask, global_attention_mask).last_hidden_state

    model_dir = save_encoder(tmp_path / "m", "LongformerModel")
    inputs = batch(40, (2, 0, 1), seed=1)
    args = tuple(inputs.values())
    model = Hidden(LongformerModel.from_pretrained(model_dir))
    with torch.no_grad():
        want = model(*args)
        program = torch.export.export(model, args, strict=False)
        torch.testing.assert_close(program.module()(*args), want, atol=1e-5, rtol=1e-5)
        for m in model.modules():
            if hasattr(m, "impl"):
                m.impl = "export"
        seq = torch.export.Dim("seq", min=2, max=MAX_LENGTH)
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):
            program = torch.export.export(model, args, dynamic_shapes=({0: torch.export.Dim("b"), 1: seq},) * 3,
                                          strict=False)
        other = batch(77, (0, 4, 1), seed=2)
        want = LongformerModel.from_pretrained(model_dir)(**other).last_hidden_state
        got = program.module()(*other.values())
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- CLI errors (no export)
def _cli(argv, capsys):
    code = cli.main(["export", *argv])
    out = capsys.readouterr()
    return code, out.err.strip().splitlines()


def test_cli_missing_model(tmp_path, capsys):
    code, err = _cli([str(tmp_path / "nope"), str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("longformer export: error:") and "not a directory" in err[0]


def test_cli_no_config(tmp_path, capsys):
    code, err = _cli([str(tmp_path), str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and len(err) == 1 and "no config.json" in err[0]


def test_cli_unsupported_architecture(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    code, err = _cli([str(tmp_path), str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and len(err) == 1 and "BertModel" in err[0] and "LongformerForMaskedLM" in err[0]


def test_cli_led_needs_part_encoder(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LEDForConditionalGeneration"]}))
    code, err = _cli([str(tmp_path), str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and len(err) == 1 and "--part encoder" in err[0]


def test_cli_missing_weights(tmp_path, capsys):
    save_encoder(tmp_path / "m", "LongformerModel")
    (tmp_path / "m" / "model.safetensors").unlink()
    code, err = _cli([str(tmp_path / "m"), str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and len(err) == 1 and "cannot load the model" in err[0]
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("option", [["--opset", "11"], ["--opset", "999"], ["--trace-length", "1"]])
def test_cli_bad_options(tmp_path, capsys, option):
    save_encoder(tmp_path / "m", "LongformerModel")
    code, err = _cli([str(tmp_path / "m"), str(tmp_path / "o.onnx"), *option], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("longformer export: error:") and option[0] in err[0]
    assert not (tmp_path / "o.onnx").exists()


def test_cli_out_is_a_directory(tmp_path, capsys):
    save_encoder(tmp_path / "m", "LongformerModel")
    code, err = _cli([str(tmp_path / "m"), str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and "is a directory" in err[0]


# ----------------------------------------------------------------------------- every model class (slow)
TASKS = {
    "LongformerForMaskedLM": ("logits",),
    "LongformerForSequenceClassification": ("logits",),
    "LongformerForQuestionAnswering": ("start_logits", "end_logits"),
    "LongformerForTokenClassification": ("logits",),
}


@pytest.mark.slow
@pytest.mark.parametrize("cls_name", sorted(TASKS))
def test_task_models(tmp_path, capsys, cls_name):
    """Through the CLI, as a user would; checked at two lengths other than the traced one."""
    model_dir = save_encoder(tmp_path / "m", cls_name, seed=3)
    assert cli.main(["export", str(model_dir), str(tmp_path / "m.onnx"), "--trace-length", "128"]) == 0
    assert "wrote" in capsys.readouterr().out
    for T, counts in ((37, (0, 1, 6)), (517, (12, 1, 0))):
        inputs = batch(T, counts, seed=T)
        got, want = run_onnx(tmp_path / "m.onnx", inputs), _eager(model_dir, inputs, cls_name)
        for name in TASKS[cls_name]:
            assert_close(got[name], getattr(want, name), f"{cls_name}.{name} at T={T}")
    assert quadratic_values(tmp_path / "m.onnx") == {}


@pytest.mark.slow
def test_multiple_choice(tmp_path):
    model_dir = save_encoder(tmp_path / "m", "LongformerForMultipleChoice", seed=4)
    export_onnx(model_dir, tmp_path / "m.onnx")
    for T, choices in ((37, 3), (300, 2)):
        inputs = batch(T, (1, 0, 3), seed=T, choices=choices)
        got, want = run_onnx(tmp_path / "m.onnx", inputs), _eager(model_dir, inputs, "LongformerForMultipleChoice")
        assert_close(got["logits"], want.logits, f"logits at T={T}, {choices} choices")


@pytest.mark.slow
def test_task_model_part_encoder(tmp_path):
    model_dir = save_encoder(tmp_path / "m", "LongformerForSequenceClassification", seed=5)
    result = export_onnx(model_dir, tmp_path / "m.onnx", part="encoder")
    assert result.output_names == ("last_hidden_state",)  # a task model's encoder has no pooler
    inputs = batch(200, (1, 2, 0), seed=6)
    import longformer.encoder as encoder

    with torch.no_grad():
        want = encoder.LongformerForSequenceClassification.from_pretrained(model_dir).longformer(**inputs)
    assert_close(run_onnx(tmp_path / "m.onnx", inputs)["last_hidden_state"], want.last_hidden_state, "encoder")


@pytest.mark.slow
def test_led_encoder(tmp_path, capsys):
    from longformer.led import from_pretrained

    model_dir = save_led(tmp_path / "led")
    assert cli.main(["export", str(model_dir), str(tmp_path / "led.onnx"), "--part", "encoder"]) == 0
    model = from_pretrained(model_dir)
    for T, counts in ((37, (1, 0, 4)), (700, (2, 0, 30))):
        inputs = batch(T, counts, seed=T)
        with torch.no_grad():
            want = model.led.encode(**inputs).last_hidden_state
        assert_close(run_onnx(tmp_path / "led.onnx", inputs)["last_hidden_state"], want, f"LED encoder at T={T}")
    assert quadratic_values(tmp_path / "led.onnx") == {}


@pytest.mark.slow
def test_traced_at_1024_run_at_517_and_4096(tmp_path):
    """The issue's example lengths, with a 4096-token position table."""
    model_dir = save_encoder(tmp_path / "m", "LongformerModel", seed=7, max_position_embeddings=4098,
                             attention_window=[16, 32], attention_dilation=[[1, 3], [2, 1]])
    export_onnx(model_dir, tmp_path / "m.onnx", trace_length=1024)
    for T, counts in ((517, (0, 1, 8)), (4096, (3, 0, 64))):
        inputs = batch(T, counts, seed=T)
        assert_close(run_onnx(tmp_path / "m.onnx", inputs)["last_hidden_state"],
                     _eager(model_dir, inputs).last_hidden_state, f"T={T}")


def test_cli_model_by_hub_id(tmp_path, capsys, offline_hub):
    """MODEL as a hub id, from an offline hub cache; exported and checked like a directory."""
    model_dir = save_encoder(tmp_path / "m", "LongformerModel", seed=5)
    offline_hub("acme/tiny-longformer", model_dir)
    assert cli.main(["export", "acme/tiny-longformer", str(tmp_path / "m.onnx"), "--trace-length", "48"]) == 0
    assert "wrote" in capsys.readouterr().out
    inputs = batch(70, (0, 3), seed=1)
    assert_close(run_onnx(tmp_path / "m.onnx", inputs)["last_hidden_state"],
                 _eager(model_dir, inputs).last_hidden_state, "hub id export")


def test_cli_hub_id_not_cached(tmp_path, capsys, offline_hub):
    code, err = _cli(["acme/not-there", str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and len(err) == 1 and "acme/not-there" in err[0]
