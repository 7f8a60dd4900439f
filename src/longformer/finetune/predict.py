"""Running a model over features (sharded across processes) and `longformer predict`."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_write_text, resolve_checkpoint
from ..training.distributed import DistContext, all_gather_objects
from .features import bucketed_batches, collate, load_tokenizer, pad_id
from .tasks import Task, build_features, check_labels, get_task, model_class, read_finetune_info


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device when asked (weights and the optimizer stay fp32)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device, use_token_types: bool) -> dict[str, Any]:
    """The encoder's forward arguments (targets are left out: the trainer computes the loss)."""
    return {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "global_attention_mask": batch["global_attention_mask"].to(device),
        # A RoBERTa-style model has one token type: pair ids from the tokenizer would index past it.
        "token_type_ids": batch["token_type_ids"].to(device) if use_token_types else None,
    }


@torch.no_grad()
def infer(model: torch.nn.Module, task: Task, feats: list[dict[str, Any]], *, batch_size: int, pad: int,
          use_token_types: bool, ctx: DistContext, bf16: bool, progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Logits for every feature, in feature order, on every rank. Batches are length-sorted and dealt
    round-robin to the processes; each rank gets everybody's results back."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    batches = bucketed_batches([len(f["input_ids"]) for f in feats], batch_size, shuffle=False, seed=0)
    mine = batches[ctx.rank :: ctx.world_size]
    results: list[tuple[int, dict[str, np.ndarray]]] = []
    for idx in tqdm(mine, desc="evaluate", disable=not (progress and ctx.is_main), leave=False):
        batch = collate([feats[i] for i in idx], pad)
        with autocast(ctx.device, bf16):
            out = model(**model_inputs(batch, ctx.device, use_token_types))
        per = task.outputs_to_numpy(out, [len(feats[i]["input_ids"]) for i in idx])
        results += list(zip(idx, per))
    model.train(was_training)
    merged = dict(kv for part in all_gather_objects(ctx, results) for kv in part)
    return [merged[i] for i in range(len(feats))]


def predict_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *, batch_size: int = 8,
                 truncate: bool = False, bf16: bool = False, device: str = "cpu") -> dict[str, float] | None:
    """Write one JSON line of predictions per example of ``input_path`` to ``output_path``.

    ``model_dir`` is a checkpoint written by ``longformer finetune`` (it carries finetune.json with the
    task and label names), as a directory or a hub id. When the input has gold labels/answers/tags,
    returns their metrics (also written to ``<output>.metrics.json``); otherwise None.
    """
    model_dir = resolve_checkpoint(model_dir)
    info = read_finetune_info(model_dir)
    task, labels = get_task(info["task"]), info["labels"]
    examples = task.load_examples(input_path, require_labels=False)
    tokenizer = load_tokenizer(model_dir)
    feats = build_features(task, tokenizer, examples, labels, max_length=info["max_length"], truncate=truncate,
                           doc_stride=info.get("doc_stride", 128), name=str(input_path), with_targets=False)
    model = model_class(task).from_pretrained(str(model_dir)).to(device)
    ctx = DistContext(device=torch.device(device))
    outputs = infer(model, task, feats, batch_size=batch_size, pad=pad_id(tokenizer),
                    use_token_types=info.get("use_token_types", True), ctx=ctx, bf16=bf16, progress=True)
    # QA outputs are per window, not per example: prediction rows only use them for classification
    per_example = outputs if len(outputs) == len(examples) else [{}] * len(examples)
    preds = task.decode(examples, feats, outputs, labels)
    lines = [json.dumps({"id": ex.id, **task.prediction_row(ex, pred, out, labels)}, ensure_ascii=False)
             for ex, pred, out in zip(examples, preds, per_example)]
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_path, "\n".join(lines) + "\n")
    if not task.has_gold(examples):
        return None
    check_labels(task, labels, examples, str(input_path))  # after writing: predictions are still useful
    metrics = task.score(examples, preds, labels)
    atomic_write_text(output_path.with_name(output_path.name + ".metrics.json"), json.dumps(metrics, indent=2))
    return metrics
