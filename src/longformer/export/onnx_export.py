"""`export_onnx`: trace a model to ONNX with dynamic batch and length, verify it, then write it atomically.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``, i.e. ``torch.export`` then translation by
onnxscript) is used: it records the sequence length as a symbol, so the padding and block counts of
the attention are computed from the input's shape at run time, and the number of global tokens (a
data-dependent size) becomes a run-time value in the graph. The legacy TorchScript tracer would freeze
that number (a Python int during tracing) into the graph, silently wrong for any other input.

Every Longformer self-attention is traced through ``impl="export"`` (attention/exportable.py): standard
ops only, memory linear in T. Nothing is written unless the ONNX checker passes and onnxruntime's
outputs equal eager PyTorch's (the model as users run it, default attention kernel) within tolerance on
an input of a length other than the traced one, with padding and global tokens.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._files import atomic_write
from .graphs import INPUT_NAMES, Exportable, ExportError, attention_impls, load_for_export, set_attention_impl

# Opset 18: the lowest the dynamo exporter emits, run by every onnxruntime since 1.14 (2023) and by most
# other runtimes; nothing in these graphs needs a later operator.
DEFAULT_OPSET = 18
MIN_OPSET = 18
TOLERANCE = 1e-4  # |onnxruntime - eager| <= TOLERANCE * (1 + |eager|), fp32
DEFAULT_TRACE_LENGTH = 64


@dataclass
class ExportResult:
    path: Path
    architecture: str
    part: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    size_bytes: int
    checked_lengths: list[int] = field(default_factory=list)  # lengths run in onnxruntime against eager
    max_abs_diff: float | None = None  # over the checked outputs, None when not checked


def export_onnx(model: str | os.PathLike, out: str | os.PathLike, *, part: str = "model", opset: int = DEFAULT_OPSET,
                check: bool = True, trace_length: int = DEFAULT_TRACE_LENGTH) -> ExportResult:
    """Export the checkpoint dir ``model`` to the ONNX file ``out``.

    The graph's inputs are int64 ``input_ids``, ``attention_mask`` (1 = token) and ``global_attention_mask``
    (1 = global), (B, T) — (B, N, T) for multiple choice — with B, T (and N) dynamic, T up to the model's
    position table. Outputs are named as the output dataclass's fields (see graphs.py). ``check`` runs
    onnx.checker and one onnxruntime run against eager PyTorch before writing; raises ExportError on
    bad input or a failed check (nothing is written then).
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"--opset must be an int >= {MIN_OPSET} (the dynamo exporter's lowest), got {opset!r}")
    import onnx

    if opset > onnx.defs.onnx_opset_version():
        raise ExportError(f"--opset {opset} is newer than this onnx package knows (max "
                          f"{onnx.defs.onnx_opset_version()}); use {DEFAULT_OPSET}")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"OUT {out} is a directory: give a file name such as {out / 'model.onnx'}")
    exp = load_for_export(model, part)
    T = min(trace_length, exp.max_length)
    if T < 2:
        raise ExportError(f"--trace-length must be >= 2 (and the model must take >= 2 tokens), got {trace_length}")
    proto = _export(exp, T, opset)
    data = proto.SerializeToString()
    result = ExportResult(out, exp.architecture, exp.part, opset, INPUT_NAMES, exp.output_names, len(data))
    if check:
        onnx.checker.check_model(proto)
        for length in check_lengths(T, exp.max_length):
            diff = compare_with_eager(exp, data, length, seed=length)
            result.checked_lengths.append(length)
            result.max_abs_diff = max(diff, result.max_abs_diff or 0.0)
    atomic_write(out, lambda f: f.write(data))
    return result


def check_lengths(traced: int, max_length: int) -> list[int]:
    """The check runs at one length other than the traced one: longer when the position table allows."""
    longer = traced + 13
    return [longer if longer <= max_length else max(2, traced - 13)]


def _export(exp: Exportable, T: int, opset: int):
    B = 2  # not 1: the exporter would specialise a size-1 batch
    inputs = sample_inputs(exp, B, T, seed=0)
    batch = torch.export.Dim("batch", min=1)
    # T >= 2: a length-1 input would be specialised on (size 1 broadcasts), so the graph excludes it
    seq = torch.export.Dim("sequence", min=2, max=exp.max_length)
    axes = {0: batch, 1: seq} if exp.choices is None else {0: batch, 1: torch.export.Dim("choices", min=1), 2: seq}
    before = attention_impls(exp.graph)
    set_attention_impl(exp.graph, "export")
    quiet = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed", once per run
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        # backed_size_oblivious: the block counts derived from T may be 1 at run time; without it the
        # tracer specialises on whether they are (a guard on the traced length), with it the graph
        # takes the general path, which is also right for 1 (the checks below run short inputs)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
                torch.fx.experimental._config.patch(backed_size_oblivious=True), warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, UserWarning))  # exporter internals, not ours
            program = torch.onnx.export(
                exp.graph, tuple(inputs[n] for n in INPUT_NAMES), None, dynamo=True, opset_version=opset,
                input_names=list(INPUT_NAMES), output_names=list(exp.output_names),
                dynamic_shapes={n: axes for n in INPUT_NAMES}, optimize=True, verbose=False,
            )
    finally:
        quiet.setLevel(level)
        set_attention_impl(exp.graph, before.pop() if len(before) == 1 else "auto")
    # the exporter's optimizer leaves an unused initializer behind the global rows' If node; onnxruntime
    # would warn about it ("Removing initializer ...") every time it loads the graph
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(program.model)
    return program.model_proto


def sample_inputs(exp: Exportable, B: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    """int64 inputs with padding at the end of row 1 and a different number of global tokens per row
    (row 0: first and middle token, row 1: its second token; rows past 1: none)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T) if exp.choices is None else (B, exp.choices, T)
    low = exp.pad_token_id + 1 if exp.pad_token_id + 1 < exp.vocab_size else 0
    ids = torch.randint(low, exp.vocab_size, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    glob = torch.zeros(shape, dtype=torch.long)
    glob[0, ..., [0, T // 2]] = 1
    if B > 1:
        mask[1, ..., T - max(1, T // 4):] = 0
        ids[1, ..., T - max(1, T // 4):] = exp.pad_token_id
        glob[1, ..., min(1, T - 1)] = 1
    return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob}


def compare_with_eager(exp: Exportable, onnx_bytes: bytes, T: int, seed: int, B: int = 2) -> float:
    """Run the graph in onnxruntime and the model in eager PyTorch on one input; raise ExportError when
    they differ by more than the tolerance. Returns the largest absolute difference."""
    import numpy as np
    import onnxruntime as ort

    inputs = sample_inputs(exp, B, T, seed)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(list(exp.output_names), {n: t.numpy() for n, t in inputs.items()})
    with torch.no_grad():
        want = exp.graph(*(inputs[n] for n in INPUT_NAMES))
    worst = 0.0
    for name, a, b in zip(exp.output_names, got, want):
        b = b.float().numpy()
        if a.shape != b.shape:
            raise ExportError(f"check failed: onnxruntime's {name} has shape {a.shape}, eager {b.shape} (T={T})")
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        excess = np.abs(a - b) - TOLERANCE * (1.0 + np.abs(b))
        if not np.isfinite(a).all() or (a.size and float(excess.max()) > 0):
            raise ExportError(f"check failed: onnxruntime's {name} differs from eager PyTorch by {diff:.3g} "
                              f"(tolerance {TOLERANCE:g} x (1 + |eager|)) at B={B}, T={T}; nothing was written")
        worst = max(worst, diff)
    return worst
