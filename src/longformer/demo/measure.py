"""Time and peak memory of one model on one input, each in a fresh process (so peaks do not mix).

Run by the demo as ``python -m longformer.demo.measure SPEC.json``; prints one JSON line. Three kinds:

- ``long``: our LongformerModel (sliding window) on the whole input, one sequence of T tokens.
- ``dense``: the same weights in transformers' BertModel (full attention, SDPA) with the position
  table extended the same way: what the original architecture costs at T tokens.
- ``chunks``: the original MiniLM, unmodified, on the input cut into 512-token chunks (one batch);
  what one does when a model stops at 512 positions (no context crosses a chunk border).
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._memory import reset_peak, rss_mb

KINDS = ("long", "dense", "chunks")



def build(kind: str, spec: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    ids = torch.load(spec["ids_path"], weights_only=True).view(1, -1)  # (1, T) with [CLS] ... [SEP]
    if kind == "long":
        from longformer.encoder import LongformerModel

        return LongformerModel.from_pretrained(spec["model_dir"]).eval(), {"input_ids": ids}
    import transformers

    if kind == "dense":
        from safetensors.torch import load_file

        from longformer.convert import BERT_TO_LONGFORMER
        from longformer.convert.weights import invert, rename_keys

        config = transformers.BertConfig.from_pretrained(spec["source_dir"])
        config.max_position_embeddings = ids.shape[1]
        config._attn_implementation = "sdpa"  # full attention through scaled_dot_product_attention
        model = transformers.BertModel(config, add_pooling_layer=True)
        state = load_file(str(Path(spec["model_dir"]) / "model.safetensors"))
        # Longformer names back to BERT's (the convert table read backwards); the global projections
        # and the extra position rows have no place in BertModel at this length.
        state = {k: v for k, v in state.items() if "_global." not in k}
        state = {k.removeprefix("bert."): v for k, v in rename_keys(state, invert(BERT_TO_LONGFORMER)).items()}
        key = "embeddings.position_embeddings.weight"
        state[key] = state[key][: ids.shape[1]]
        result = model.load_state_dict(state, strict=False)
        buffers = {name for name, _ in model.named_buffers()}  # constant id buffers, rebuilt by BertModel
        if result.unexpected_keys or set(result.missing_keys) - buffers:
            raise RuntimeError(f"dense model weights do not match: {result}")
        return model.eval(), {"input_ids": ids}
    if kind == "chunks":
        cls_id, sep_id, pad_id = spec["cls_id"], spec["sep_id"], spec["pad_id"]
        body = ids[0, 1:-1]
        size = spec["chunk_tokens"] - 2
        rows = [body[i : i + size] for i in range(0, body.numel(), size)]
        batch = torch.full((len(rows), size + 2), pad_id, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for r, row in enumerate(rows):
            batch[r, : row.numel() + 2] = torch.cat([torch.tensor([cls_id]), row, torch.tensor([sep_id])])
            mask[r, : row.numel() + 2] = 1
        model = transformers.BertModel.from_pretrained(spec["source_dir"]).eval()
        return model, {"input_ids": batch, "attention_mask": mask}
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    model, inputs = build(spec["kind"], spec)
    gc.collect()
    reset_peak()  # then the baseline, read after the reset (see longformer._memory)
    before, _ = rss_mb()
    seconds = []
    with torch.inference_mode():
        for _ in range(spec.get("warmup", 1) + spec.get("repeats", 2)):
            start = time.perf_counter()
            model(**inputs)
            seconds.append(time.perf_counter() - start)
    _, peak = rss_mb()
    timed = seconds[spec.get("warmup", 1) :]
    return {
        "kind": spec["kind"],
        "seconds": statistics.median(timed),
        "all_seconds": seconds,
        "rss_before_mb": before,
        "peak_mb": peak,
        "extra_peak_mb": max(0.0, peak - before),
        "shape": list(inputs["input_ids"].shape),
        "threads": torch.get_num_threads(),
    }


def run_in_subprocess(spec: dict[str, Any], spec_path: Path) -> dict[str, Any]:
    """Measure ``spec`` in a fresh Python process and return its result dict."""
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "longformer.demo.measure", str(spec_path)],
        capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {spec['kind']!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(Path(sys.argv[1]).read_text()))))
