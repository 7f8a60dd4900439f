"""Running a model over features (sharded across processes) and `longformer predict`."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import load_examples
from ..training.distributed import DistContext, all_gather_objects
from .features import bucketed_batches, collate, load_tokenizer, pad_id
from .tasks import build_features, check_labels, decode, model_class, outputs_to_numpy, read_finetune_info, score


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
def infer(model: torch.nn.Module, task: str, feats: list[dict[str, Any]], *, batch_size: int, pad: int,
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
        per = outputs_to_numpy(task, out, [len(feats[i]["input_ids"]) for i in idx])
        results += list(zip(idx, per))
    model.train(was_training)
    merged = dict(kv for part in all_gather_objects(ctx, results) for kv in part)
    return [merged[i] for i in range(len(feats))]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def predict_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *, batch_size: int = 8,
                 truncate: bool = False, bf16: bool = False, device: str = "cpu") -> dict[str, float] | None:
    """Write one JSON line of predictions per example of ``input_path`` to ``output_path``.

    ``model_dir`` is a checkpoint written by ``longformer finetune`` (it carries finetune.json with the
    task and label names). When the input has gold labels/answers/tags, returns their metrics (also
    written to ``<output>.metrics.json``); otherwise None.
    """
    info = read_finetune_info(model_dir)
    task, labels = info["task"], info["labels"]
    examples = load_examples(task, input_path, require_labels=False)
    tokenizer = load_tokenizer(model_dir)
    feats = build_features(task, tokenizer, examples, labels, max_length=info["max_length"], truncate=truncate,
                           doc_stride=info.get("doc_stride", 128), name=str(input_path), with_targets=False)
    model = model_class(task).from_pretrained(str(model_dir)).to(device)
    ctx = DistContext(device=torch.device(device))
    outputs = infer(model, task, feats, batch_size=batch_size, pad=pad_id(tokenizer),
                    use_token_types=info.get("use_token_types", True), ctx=ctx, bf16=bf16, progress=True)
    preds = decode(task, examples, feats, outputs, labels)
    lines = []
    for ex, pred, out in zip(examples, preds, outputs if task == "classification" else [None] * len(preds)):
        row: dict[str, Any] = {"id": ex.id}
        if task == "classification":
            p = np.exp(out["logits"] - out["logits"].max())
            row["label"] = pred
            row["probabilities"] = {lab: float(v) for lab, v in zip(labels, p / p.sum())}
        elif task == "qa":
            row["answer"] = pred
        else:
            row["tokens"], row["tags"] = ex.tokens, pred
        lines.append(json.dumps(row, ensure_ascii=False))
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(output_path, "\n".join(lines) + "\n")
    has_gold = all(
        (ex.label is not None) if task == "classification" else bool(ex.answers) if task == "qa" else ex.tags is not None
        for ex in examples
    )
    if not has_gold:
        return None
    check_labels(task, labels, examples, str(input_path))  # after writing: predictions are still useful
    metrics = score(task, examples, preds, labels)
    _atomic_write_text(output_path.with_name(output_path.name + ".metrics.json"), json.dumps(metrics, indent=2))
    return metrics
