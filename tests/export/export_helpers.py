"""Tiny seeded checkpoints and awkward inputs for the export tests.

(Named export_helpers, not helpers: test dirs share one import namespace.)
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

VOCAB, PAD = 99, 1
MAX_LENGTH = 1100  # tokens the tiny models take: room to run longer than traced


def encoder_config(**kw):
    from longformer.encoder import LongformerConfig

    args = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                max_position_embeddings=MAX_LENGTH + PAD + 1, attention_window=[3, 8], attention_dilation=[[1, 2], 1],
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD, num_labels=2)
    args.update(kw)
    return LongformerConfig(**args)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (biases and LayerNorms too), so that no part of the graph is trivially 0 or 1."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def save_encoder(path: Path, cls_name: str, seed: int = 0, **config) -> Path:
    import longformer.encoder as encoder

    randomize(getattr(encoder, cls_name)(encoder_config(**config)), seed).save_pretrained(path)
    return path


def save_led(path: Path, seed: int = 0) -> Path:
    from longformer.led import LEDConfig, LEDForConditionalGeneration

    config = LEDConfig(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24,
                       max_encoder_position_embeddings=MAX_LENGTH, max_decoder_position_embeddings=32,
                       attention_window=[4, 6], attention_dilation=[1, [1, 3]], dropout=0.0, pad_token_id=PAD)
    randomize(LEDForConditionalGeneration(config), seed).save_pretrained(path)
    return path


def batch(T: int, global_counts=(0, 1, 5), pad_rows=(1, 2), seed: int = 0, choices: int | None = None):
    """int64 (B, T) ids, attention_mask, global_attention_mask ((B, N, T) with choices): row b has
    global_counts[b] global tokens at random positions (a different count per row, 0 included; one of
    them may land on padding, which must be ignored); rows in pad_rows are padded at the end."""
    g = torch.Generator().manual_seed(seed)
    B = len(global_counts)
    shape = (B, T) if choices is None else (B, choices, T)
    ids = torch.randint(PAD + 1, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    glob = torch.zeros(shape, dtype=torch.long)
    for b, n in enumerate(global_counts):
        if b in pad_rows:
            cut = T - max(1, T // (3 + b))
            mask[b, ..., cut:] = 0
            ids[b, ..., cut:] = PAD
        glob[b, ..., torch.randperm(T, generator=g)[: min(n, T)]] = 1
    return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob}


def run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v.numpy() for k, v in inputs.items()})))


def assert_close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    want = want.detach().float().numpy()
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs eager {want.shape}"
    err = float(np.abs(got - want).max())
    assert err <= 1e-4, f"{what}: onnxruntime differs from eager by {err:.3g}"


def quadratic_values(path: Path) -> dict[str, list[str]]:
    """name -> dims of every value in the graph (after ONNX shape inference) whose size grows faster than
    linearly in the sequence length: its symbolic dims are evaluated at T = 1000 and T = 2000 (other
    symbols, such as the batch or the number of global tokens, at 1) and the element counts compared
    (x2 is linear, x4 a T x T tensor). The subgraphs of control-flow nodes (If branches) are scanned
    too. Also asserts that every node output has an inferred shape, so that nothing escapes the scan."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    seq = g.input[0].type.tensor_type.shape.dim[-1].dim_param
    assert seq, "the sequence axis of input_ids must be symbolic"
    known: dict = {}
    graphs = [g]
    while graphs:
        graph = graphs.pop()
        known.update({vi.name: vi for vi in [*graph.value_info, *graph.output, *graph.input]})
        for node in graph.node:
            for a in node.attribute:
                graphs += [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for out in node.output:
                if out:
                    assert out in known and known[out].type.tensor_type.HasField("shape"), f"no inferred shape for {out}"
    bad = {}
    for name, vi in known.items():
        dims = [d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim]
        small, large = (_numel(dims, seq, T) for T in (1000, 2000))
        if large > 3 * small:
            bad[name] = dims
    return bad


def _numel(dims: list[str], seq: str, T: int) -> int:
    n = 1
    for d in dims:
        names = {w: 1 for w in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", d)}
        names.update({seq: T, "Min": min, "Max": max})
        n *= int(eval(d, {"__builtins__": {}}, names))  # noqa: S307 (dims written by the ONNX exporter)
    return n
