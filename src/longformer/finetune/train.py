"""The fine-tuning loop: one code path for one process and for ``torchrun`` (DistributedDataParallel).

Batching: every rank builds the same seeded, length-bucketed plan of *global* micro-batches of
``batch_size * world_size`` examples and takes the slice ``[rank::world_size]`` of each (a
DistributedSampler over buckets). The loss is summed and divided by the number of loss terms in
the whole optimizer step (all micro-batches, all ranks; known in advance from the plan), times
``world_size`` because DDP averages gradients. So the update equals the single-process update on
the same global batch, whatever the split and the padding.

The run directory (``OUT/last``), the resume rule and ``--extend`` are `longformer.training`'s.
The rate follows linear warmup then linear decay to 0 at the run's total steps; ``--extend``
recomputes that schedule for the new total (see docs/finetune.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._files import read_config, recover_dir, resolve_checkpoint
from ..errors import LongformerError
from ..training import (DistContext, LRSchedule, RunDir, RunSpec, adamw, all_gather_objects, all_reduce_max, barrier,
                        fingerprint, init_distributed, linear_warmup_decay, shutdown)
from . import hyperpartisan as hp
from .checkpoint import save_model_dir, write_model_files
from .data import ClassificationExample, DataError
from .features import bucketed_batches, collate, load_tokenizer, pad_id
from .predict import autocast, infer, model_inputs
from .tasks import Task, build_features, check_labels, get_task, model_class, selection_metric

# Options that do not change the trained weights or the metrics: a resume may change them.
FREE_OPTIONS = ("out", "resume", "extend", "save_every", "eval_batch_size", "device", "progress",
                "gradient_checkpointing")
SCHEDULE_OPTIONS = ("epochs", "max_steps")  # may grow with --extend
DATA_OPTIONS = ("train", "validation", "test", "hyperpartisan")  # compared by content


@dataclass
class FinetuneConfig:
    """Arguments of ``longformer finetune`` (see docs/finetune.md). ``batch_size`` is per process."""

    task: str
    model: str
    out: str
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    hyperpartisan: str | None = None  # a Hyperpartisan dir replaces train/validation/test
    split: str = "leak-free"
    split_seed: int = 0
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int | None = None
    truncate: bool = False
    doc_stride: int = 128
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    bf16: bool = False
    patience: int | None = None
    metric: str | None = None
    seed: int = 42
    resume: bool = False
    extend: bool = False  # with resume: --epochs / --max-steps may grow
    save_every: int | None = None
    eval_batch_size: int | None = None
    device: str | None = None
    progress: bool = True


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(msg, file=sys.stderr, flush=True)


def _load_data(cfg: FinetuneConfig, task: Task) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
    if cfg.hyperpartisan:
        if task.name != "classification":
            raise DataError(f"--hyperpartisan is a classification dataset; got --task {cfg.task}")
        if cfg.train or cfg.validation or cfg.test:
            raise DataError("pass either --hyperpartisan DIR or --train/--validation/--test files, not both")
        splits = hp.load_splits(cfg.hyperpartisan, cfg.split, cfg.split_seed)
        data = {name: [ClassificationExample(r["text"], r["label"], None, r["id"]) for r in rows]
                for name, rows in (("train", splits["train"]), ("validation", splits["dev"]), ("test", splits["test"]))}
        return data, {"name": cfg.split, "leaky": cfg.split == "paper", **hp.split_report(splits)}
    if not cfg.train or not cfg.validation:
        raise DataError("--train and --validation are required (or --hyperpartisan DIR)")
    data = {"train": task.load_examples(cfg.train), "validation": task.load_examples(cfg.validation)}
    if cfg.test:
        data["test"] = task.load_examples(cfg.test)
    return data, None


def _model_facts(model_dir: Path) -> tuple[int, bool]:
    """(longest input the model takes, whether it has more than one token type)."""
    from longformer.encoder.config import LongformerConfig

    if not (model_dir / "config.json").is_file():
        raise DataError(f"--model {model_dir}: no config.json; pass a Longformer model dir (longformer convert)")
    raw = read_config(model_dir)  # a malformed file is an error naming it
    try:
        config = LongformerConfig.from_dict(raw)
    except LongformerError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(f"--model {model_dir}: config.json cannot be used ({err})") from None
    return config.max_length, config.type_vocab_size > 1


def run_spec(cfg: FinetuneConfig, model_dir: Path, world: int) -> RunSpec:
    """What a resume must match: every option but `FREE_OPTIONS`, data files and the model by content."""
    args: dict[str, Any] = {}
    for name, value in dataclasses.asdict(cfg).items():
        if name in FREE_OPTIONS or name in SCHEDULE_OPTIONS:
            continue
        if name in DATA_OPTIONS:
            value = fingerprint(value) if value else None
        elif name == "model":
            value = fingerprint(model_dir)
        args["--" + name.replace("_", "-")] = value
    args["processes"] = world
    schedule = {"--epochs": cfg.epochs, "--max-steps": cfg.max_steps}
    return RunSpec("finetune", args, schedule, extend_hint=f"--extend with more --epochs (now {cfg.epochs}) "
                   f"or a larger --max-steps (now {cfg.max_steps})")


def epoch_plan(feats: list[dict[str, Any]], cfg: FinetuneConfig, world: int, epoch: int) -> list[list[list[int]]]:
    """Optimizer steps of one epoch, each a list of ``grad_accum`` global micro-batches (index lists).

    A trailing global batch with fewer examples than processes is dropped (a rank with nothing to
    compute would stall DDP); the seeded shuffle changes which examples that is each epoch.
    """
    global_batch = cfg.batch_size * world
    batches = bucketed_batches([len(f["input_ids"]) for f in feats], global_batch, shuffle=True,
                               seed=cfg.seed * 1000 + epoch)
    batches = [b for b in batches if len(b) >= world]
    return [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]


def _peak_memory_mb(ctx: DistContext) -> float:
    if ctx.device.type == "cuda":
        return torch.cuda.max_memory_allocated(ctx.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train, keep the best checkpoint (``out/best``), evaluate it, write ``out/metrics.json``.

    Returns the metrics dict (on every rank). Raises ``DataError`` for unusable inputs, `ResumeError`
    when ``--resume`` meets other arguments, `RunFinished` when the run is already complete.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _finetune(cfg, ctx)
    finally:
        shutdown(ctx)


def _finetune(cfg: FinetuneConfig, ctx: DistContext) -> dict[str, Any]:
    # --- setup
    task = get_task(cfg.task)
    model_dir = resolve_checkpoint(cfg.model)  # a hub id becomes its local snapshot, once
    out = Path(cfg.out)
    run = RunDir(out, run_spec(cfg, model_dir, ctx.world_size), ctx)
    resumed = run.start(resume=cfg.resume, extend=cfg.extend, markers=("best", "metrics.json"),
                        log=lambda m: _log(ctx, m))
    if ctx.is_main:
        recover_dir(out / "best")
    barrier(ctx)
    if resumed is not None and resumed.finished and (out / "metrics.json").is_file():
        raise run.finished_error(resumed)
    model_max, use_token_types = _model_facts(model_dir)
    max_length = cfg.max_length or model_max
    if max_length > model_max:
        raise DataError(f"--max-length {max_length} exceeds what {cfg.model} takes ({model_max} tokens)")

    data, split_info = _load_data(cfg, task)
    labels = task.label_list(data["train"])
    task.check_train_labels(labels)
    for name in ("validation", "test"):
        if name in data:
            check_labels(task, labels, data[name], name)
    tokenizer = load_tokenizer(model_dir)
    pad = pad_id(tokenizer)
    feats, notes = {}, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, examples in data.items():
            feats[name] = build_features(task, tokenizer, examples, labels, max_length=max_length,
                                         truncate=cfg.truncate, doc_stride=cfg.doc_stride, name=name,
                                         with_targets=True)
    for w in caught:
        notes.append(str(w.message))
        _log(ctx, f"warning: {w.message}")
    _log(ctx, "data: " + ", ".join(f"{k} {len(v)} examples / {len(feats[k])} features" for k, v in data.items()))

    torch.manual_seed(cfg.seed)  # same head initialisation on every rank
    if resumed is not None:
        model = model_class(task).from_pretrained(str(resumed.directory))
    else:
        model = model_class(task).from_pretrained(str(model_dir), **task.head_overrides(labels))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(ctx.device).train()
    core = model
    if ctx.enabled:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    torch.manual_seed(cfg.seed + ctx.rank)  # dropout differs per rank, as it would per example

    steps_per_epoch = len(epoch_plan(feats["train"], cfg, ctx.world_size, 0))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    if total_steps < 1:
        raise DataError(f"nothing to train: {len(feats['train'])} training features, batch {cfg.batch_size} x "
                        f"{ctx.world_size} processes, --epochs {cfg.epochs}, --max-steps {cfg.max_steps}")
    opt = adamw(core, cfg.lr, cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)
    schedule = LRSchedule(opt, lambda s: linear_warmup_decay(s, warmup, total_steps))
    info = {"task": task.name, "labels": labels, "max_length": max_length, "doc_stride": cfg.doc_stride,
            "use_token_types": use_token_types, "source_model": cfg.model}
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "bad_epochs": 0,
                             "history": [], "train_time_s": 0.0, "eval_time_s": 0.0}
    if resumed is not None:
        opt.load_state_dict(resumed.state["optimizer"])
        state = resumed.state["state"]
        torch.set_rng_state(resumed.state["rng"][ctx.rank])  # dropout continues where it stopped
        _log(ctx, f"resumed at epoch {state['epoch']} step {state['global_step']}")

    def save(finished: bool) -> None:
        rngs = all_gather_objects(ctx, torch.get_rng_state())
        run.save({"optimizer": opt.state_dict(), "state": state, "rng": rngs}, step=state["global_step"],
                 finished=finished, write_files=lambda d: write_model_files(core, model_dir, d, info))

    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["global_step"], desc="finetune", unit="step",
               disable=not (cfg.progress and ctx.is_main), dynamic_ncols=True)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    stop = state["global_step"] >= total_steps or (resumed is not None and resumed.finished)
    while not stop and state["epoch"] < cfg.epochs:
        plan = epoch_plan(feats["train"], cfg, ctx.world_size, state["epoch"])
        t0 = time.perf_counter()
        for step in plan[state["step_in_epoch"] :]:
            # --- step
            schedule.set(state["global_step"])
            loss = _train_step(model, core, opt, task, step, feats["train"], pad, ctx, cfg, use_token_types)
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", epoch=state["epoch"])
            if cfg.save_every and state["global_step"] % cfg.save_every == 0:
                state["train_time_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                save(finished=False)
            if state["global_step"] >= total_steps:
                stop = True
                break
        state["train_time_s"] += time.perf_counter() - t0
        # --- evaluate (after every epoch, and where --max-steps ends the run)
        t1 = time.perf_counter()
        metrics = evaluate(model, core, task, cfg, ctx, data["validation"], feats["validation"], labels, pad,
                           use_token_types, eval_bs)
        state["eval_time_s"] += time.perf_counter() - t1
        name, value = selection_metric(task, metrics, cfg.metric)
        improved = state["best"] is None or value > state["best"]["value"]
        state["history"].append({"epoch": state["epoch"], "step": state["global_step"], "validation": metrics})
        _log(ctx, f"epoch {state['epoch']} step {state['global_step']}: validation {metrics}")
        if improved:
            state["best"] = {"epoch": state["epoch"], "step": state["global_step"], "metric": name, "value": value,
                             "validation": metrics}
            state["bad_epochs"] = 0
            if ctx.is_main:
                save_model_dir(core, model_dir, out / "best", {**info, "validation": metrics})
        else:
            state["bad_epochs"] += 1
        if state["step_in_epoch"] >= len(plan):  # a --max-steps stop inside an epoch keeps its place
            state["epoch"] += 1
            state["step_in_epoch"] = 0
        if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
            _log(ctx, f"early stopping: no {name} gain for {cfg.patience} epoch(s)")
            stop = True
        # --- save
        save(finished=stop or state["epoch"] >= cfg.epochs)
    bar.close()
    return _final_report(cfg, task, ctx, data, feats, labels, pad, use_token_types, eval_bs, state, split_info,
                         notes, run)


def _train_step(model: Any, core: torch.nn.Module, opt: torch.optim.Optimizer, task: Task, step: list[list[int]],
                feats: list[dict[str, Any]], pad: int, ctx: DistContext, cfg: FinetuneConfig,
                use_token_types: bool) -> float:
    """One optimizer step over the global micro-batches ``step``; returns the loss per unit."""
    units = sum(feats[i]["units"] for gb in step for i in gb)
    loss_value = 0.0
    for k, global_batch in enumerate(step):
        local = global_batch[ctx.rank :: ctx.world_size]
        batch = collate([feats[i] for i in local], pad)
        sync = k == len(step) - 1 or not ctx.enabled
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with autocast(ctx.device, cfg.bf16):
                output = model(**model_inputs(batch, ctx.device, use_token_types))
            loss = task.loss_sum(output, {key: v.to(ctx.device) for key, v in batch.items()})
            (loss * (ctx.world_size / max(units, 1))).backward()
        loss_value += loss.item()
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_value * ctx.world_size / max(units, 1)


def evaluate(model: Any, core: torch.nn.Module, task: Task, cfg: FinetuneConfig, ctx: DistContext,
             examples: list[Any], feats: list[dict[str, Any]], labels: list[str], pad: int, use_token_types: bool,
             batch_size: int) -> dict[str, float]:
    """Metrics of the current weights on ``examples`` (identical on every rank)."""
    outputs = infer(core, task, feats, batch_size=batch_size, pad=pad, use_token_types=use_token_types,
                    ctx=ctx, bf16=cfg.bf16, progress=cfg.progress)
    return task.score(examples, task.decode(examples, feats, outputs, labels), labels)


def _final_report(cfg: FinetuneConfig, task: Task, ctx: DistContext, data: dict[str, list[Any]],
                  feats: dict[str, Any], labels: list[str], pad: int, use_token_types: bool, eval_bs: int,
                  state: dict[str, Any], split_info: dict[str, Any] | None, notes: list[str],
                  run: RunDir) -> dict[str, Any]:
    out = Path(cfg.out)
    barrier(ctx)
    best = model_class(task).from_pretrained(str(out / "best")).to(ctx.device)
    report: dict[str, Any] = {
        "task": task.name, "model": cfg.model, "labels": labels, "world_size": ctx.world_size,
        "global_batch_size": cfg.batch_size * ctx.world_size * cfg.grad_accum, "steps": state["global_step"],
        "epochs_run": state["epoch"] + (1 if state["step_in_epoch"] else 0), "best": state["best"],
        "history": state["history"],
        "validation": state["best"]["validation"],  # measured on these very weights when they were saved
        "train_time_s": state["train_time_s"], "eval_time_s": state["eval_time_s"],
        "peak_memory_mb": all_reduce_max(ctx, _peak_memory_mb(ctx)),
        "peak_memory_kind": "cuda max_memory_allocated" if ctx.device.type == "cuda" else "max RSS per process",
        "warnings": notes, "config": dataclasses.asdict(cfg),
    }
    if split_info is not None:
        report["split"] = split_info
    if "test" in data:
        report["test"] = evaluate(best, best, task, cfg, ctx, data["test"], feats["test"], labels, pad,
                                  use_token_types, eval_bs)
    run.write_json("metrics.json", report)
    _log(ctx, f"best {state['best']['metric']}={state['best']['value']:.4f} at epoch {state['best']['epoch']}; "
         f"test {report.get('test')}; metrics in {out / 'metrics.json'}")
    return report
