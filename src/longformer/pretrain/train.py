"""`pretrain-mlm`: continued masked-language-model pretraining of a (long) model, on the shared
training skeleton (longformer.training): setup / step / evaluate / save.

Data order is a pure function of the step: the packed training sequences are visited in a seeded
permutation per epoch, optimizer step ``s`` takes positions ``[s*G, (s+1)*G)`` of that endless
order (G = batch size x processes x accumulation), micro-batch ``a`` of process ``r`` the slice
``a*B*W + r*B``, and each sequence is masked afresh every epoch from (seed, epoch, index). The loss
of a step is the sum of the masked-token cross-entropies over the whole global batch divided by
their count (known before the step), so one process and K processes make the same update, and a
resumed run (RNG states restored) continues exactly where the uninterrupted one would be.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._files import replace_dir, resolve_checkpoint, staging_dir
from ..convert.files import copy_tokenizer_files
from ..encoder import LongformerForMaskedLM, load_tokenizer
from ..errors import LongformerError
from ..training import (DistContext, LRSchedule, RunDir, RunSpec, StopFlag, adamw, all_gather_objects, any_rank,
                        fingerprint, init_distributed, linear_warmup_decay, shutdown)
from .config import PretrainConfig
from .data import Vocab, pack, read_documents, tokenize, vocab_of
from .evaluate import EvalSet, eval_set, mlm_bpc
from .masking import IGNORE, mask_tokens, sequence_generator
from .mlm import MaskedTokenLoss, load_mlm_model

COMMAND = "pretrain-mlm"
MODEL_DIR = "model"  # OUT/model: the final weights, for from_pretrained (ours and transformers')
PAPER_GLOBAL_BATCH = 64  # sequences of 4096 tokens per optimizer step (paper section 5)


class PretrainError(LongformerError):
    """Arguments `pretrain-mlm` cannot run with."""


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(msg, file=sys.stderr, flush=True)


def warmup_steps(cfg: PretrainConfig) -> int:
    """--warmup, capped at a tenth of --steps so a short run still reaches its peak and decays."""
    return min(cfg.warmup, cfg.steps // 10)


def _spec(cfg: PretrainConfig, ctx: DistContext, model_dir: Path, accum: int) -> RunSpec:
    """The arguments that decide the result (files by content), and the schedule --extend may grow."""
    files = {name: {str(i): fingerprint(p) for i, p in enumerate(paths)}
             for name, paths in (("--train", cfg.train), ("--validation", cfg.validation))}
    args = {"--model": fingerprint(model_dir), **files, "--max-length": cfg.max_length,
            "--batch-size": cfg.batch_size, "--grad-accum": accum, "processes": ctx.world_size, "--lr": cfg.lr,
            "--warmup": cfg.warmup, "--weight-decay": cfg.weight_decay, "--max-grad-norm": cfg.max_grad_norm,
            "--mask-probability": cfg.mask_probability, "--freeze-encoder": cfg.freeze_encoder, "--bf16": cfg.bf16,
            "--seed": cfg.seed, "--eval-every": cfg.eval_every, "--eval-seed": cfg.eval_seed}
    return RunSpec(COMMAND, args, {"--steps": cfg.steps}, "--extend --steps M (M > the steps done)")


class Order:
    """The endless, seeded visiting order of S packed sequences: position p -> (epoch, index)."""

    def __init__(self, sequences: int, seed: int) -> None:
        self.sequences, self.seed = sequences, seed
        self._perms: dict[int, torch.Tensor] = {}

    def __call__(self, position: int) -> tuple[int, int]:
        epoch, k = divmod(position, self.sequences)
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.sequences, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))}
        return epoch, int(self._perms[epoch][k])


def _set_mode(core: LongformerForMaskedLM, freeze_encoder: bool) -> None:
    core.train()
    if freeze_encoder:
        core.longformer.eval()  # frozen features without dropout: what the head sees at evaluation


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) a run in ``cfg.out``; returns the summary also written to OUT/metrics.json."""
    ctx = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, ctx)
    finally:
        shutdown(ctx)


def _pretrain(cfg: PretrainConfig, ctx: DistContext) -> dict[str, Any]:
    for flag, value in (("--steps", cfg.steps), ("--batch-size", cfg.batch_size), ("--eval-every", cfg.eval_every),
                        ("--save-every", cfg.save_every), ("--grad-accum", cfg.grad_accum or 1)):
        if value < 1:
            raise PretrainError(f"{flag} must be >= 1, got {value}")
    accum = cfg.grad_accum or max(1, PAPER_GLOBAL_BATCH // (cfg.batch_size * ctx.world_size))
    model_dir = resolve_checkpoint(cfg.model)
    run = RunDir(Path(cfg.out), _spec(cfg, ctx, model_dir, accum), ctx)
    resumed = run.start(resume=cfg.resume, extend=cfg.extend, markers=(MODEL_DIR,), log=lambda m: _log(ctx, m))
    if resumed is not None and resumed.finished:
        raise run.finished_error(resumed)

    # --- setup: model, data, optimizer ---
    core, new_keys = load_mlm_model(resumed.directory if resumed else model_dir, seed=cfg.seed)
    if cfg.max_length > core.config.max_length:
        raise PretrainError(f"--max-length {cfg.max_length} exceeds what {cfg.model} takes ({core.config.max_length} "
                            "tokens); make a longer model with `longformer convert SRC DST --max-length N`")
    tokenizer = load_tokenizer(model_dir)
    vocab = vocab_of(tokenizer, core.config.vocab_size, core.config.pad_token_id)
    train_stream = tokenize(tokenizer, read_documents(cfg.train), vocab)
    train_ids, train_valid = pack(train_stream.ids, cfg.max_length, vocab)
    validation = None
    if cfg.validation:
        validation = eval_set(tokenize(tokenizer, read_documents(cfg.validation), vocab), vocab, cfg.max_length,
                              cfg.eval_seed, cfg.mask_probability)
    _log(ctx, f"data: {train_stream.documents} training documents, {train_stream.ids.numel()} tokens -> "
         f"{len(train_ids)} sequences of {cfg.max_length}" + (f"; validation {len(validation)} sequences, "
                                                             f"seed-{cfg.eval_seed} mask" if validation else ""))
    if cfg.freeze_encoder:
        for p in core.longformer.parameters():
            p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        core.gradient_checkpointing_enable()
    core.to(ctx.device)
    _set_mode(core, cfg.freeze_encoder)
    loss_model = MaskedTokenLoss(core)
    model: torch.nn.Module = loss_model
    if ctx.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            loss_model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = adamw(core, cfg.lr, cfg.weight_decay)
    warmup = warmup_steps(cfg)
    schedule = LRSchedule(optimizer, lambda s: linear_warmup_decay(s, warmup, cfg.steps))
    torch.manual_seed(cfg.seed * 1000 + ctx.rank)  # dropout: its own stream per process
    step, history, elapsed = 0, [], 0.0
    if resumed is not None:
        state = resumed.state
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"][ctx.rank])
        if ctx.device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state(state["cuda_rng"][ctx.rank], ctx.device)
        step, history, elapsed = resumed.step, state["history"], state["elapsed_s"]
        _log(ctx, f"resumed at step {step} of {cfg.steps}")

    order = Order(len(train_ids), cfg.seed)
    global_batch = cfg.batch_size * ctx.world_size * accum
    info = {"command": COMMAND, "source_model": str(cfg.model), "new_head_keys": new_keys,
            "config": asdict(cfg), "grad_accum": accum, "processes": ctx.world_size, "warmup_steps": warmup}

    def evaluate() -> dict[str, Any]:
        result = mlm_bpc(loss_model, validation, batch_size=cfg.eval_batch_size, bf16=cfg.bf16, ctx=ctx)
        _set_mode(core, cfg.freeze_encoder)
        return result

    def save(finished: bool) -> None:
        rngs = all_gather_objects(ctx, torch.get_rng_state())
        cuda = all_gather_objects(ctx, torch.cuda.get_rng_state(ctx.device)) if ctx.device.type == "cuda" else None
        state = {"optimizer": optimizer.state_dict(), "rng": rngs, "cuda_rng": cuda, "history": history,
                 "elapsed_s": elapsed}
        run.save(state, step=step, finished=finished, write_files=lambda d: _write_model(core, model_dir, d, info))
        if finished and ctx.is_main:
            staged = staging_dir(run.out / MODEL_DIR)
            _write_model(core, model_dir, staged, {**info, "step": step})
            replace_dir(staged, run.out / MODEL_DIR)
        run.write_json("metrics.json", {**info, "step": step, "finished": finished, "history": history})

    if validation is not None and step == 0:
        row = {"step": 0, "validation": evaluate()}
        history.append(row)
        _log(ctx, f"step 0: validation bpc {row['validation']['bpc']:.4f} (bits/char {row['validation']['bits_per_char']:.4f})")

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=COMMAND, unit="step", disable=not (cfg.progress and ctx.is_main),
               dynamic_ncols=True)
    window_tokens, window_time = 0, 0.0
    with StopFlag() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            lr = schedule.set(step)
            loss_sum, masked, tokens = _train_step(model, core, cfg, ctx, step, accum, order, train_ids, train_valid,
                                                   vocab, global_batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            window_tokens += tokens
            window_time += dt
            train_bpc = loss_sum / max(masked, 1) / math.log(2)
            if not math.isfinite(train_bpc):
                raise FloatingPointError(f"the training loss became {train_bpc} at step {step}; lower --lr")
            row: dict[str, Any] = {"step": step, "lr": lr, "train_bpc": train_bpc, "masked_tokens": masked,
                                   "tokens_per_s": tokens / dt}
            bar.update(1)
            bar.set_postfix(loss=f"{train_bpc * math.log(2):.3f}", bpc=f"{train_bpc:.3f}",
                            tok_s=f"{window_tokens / max(window_time, 1e-9):.0f}")
            if validation is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                row["validation"] = evaluate()
                bar.write(f"step {step}: train bpc {train_bpc:.4f}, validation bpc {row['validation']['bpc']:.4f}")
                window_tokens, window_time = 0, 0.0
            history.append(row)
            stopping = any_rank(ctx, stop.set or (cfg.stop_at is not None and step >= cfg.stop_at))
            if step % cfg.save_every == 0 or step == cfg.steps or stopping:
                save(finished=step == cfg.steps)
            if stopping:
                why = f"signal {stop.signum}" if stop.signum is not None else f"--stop-at {cfg.stop_at}"
                bar.write(f"stopped by {why} at step {step}; saved in {run.last} (continue with --resume)")
                break
    bar.close()
    if stop.signum is not None:
        raise KeyboardInterrupt(f"stopped by signal {stop.signum}")
    return {**info, "step": step, "finished": step >= cfg.steps, "history": history}


def _train_step(model: torch.nn.Module, core: LongformerForMaskedLM, cfg: PretrainConfig, ctx: DistContext,
                step: int, accum: int, order: Order, ids: torch.Tensor, valid: torch.Tensor, vocab: Vocab,
                global_batch: int) -> tuple[float, int, int]:
    """Forward and backward of optimizer step ``step`` (all micro-batches), gradient clipping.

    Returns (summed loss in nats, masked tokens, non-padding tokens) over the whole global batch."""
    B, W = cfg.batch_size, ctx.world_size
    first = step * global_batch
    batch = []  # (inputs, labels, valid) of every sequence of the global batch, in position order
    for p in range(first, first + global_batch):
        epoch, index = order(p)
        inputs, labels = mask_tokens(ids[index], vocab, sequence_generator(cfg.seed, epoch, index),
                                     valid=valid[index], probability=cfg.mask_probability)
        batch.append((inputs, labels, valid[index]))
    total_masked = sum(int((labels != IGNORE).sum()) for _, labels, _ in batch)
    total_tokens = sum(int(v.sum()) for _, _, v in batch)
    loss_sum = 0.0
    for a in range(accum):
        mine = batch[a * B * W + ctx.rank * B: a * B * W + (ctx.rank + 1) * B]
        inputs, labels, mask = (torch.stack(t).to(ctx.device) for t in zip(*mine))
        sync = a == accum - 1 or not ctx.enabled
        with contextlib.nullcontext() if sync else model.no_sync():
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, _ = model(inputs, mask, labels)
            # DDP averages gradients over the W processes: scale by W so the step is sum / total_masked.
            (loss * (W / max(total_masked, 1))).backward()
        loss_sum += float(loss.detach())
    parts = all_gather_objects(ctx, loss_sum)
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in core.parameters() if p.requires_grad], cfg.max_grad_norm)
    return sum(parts), total_masked, total_tokens


def _write_model(core: LongformerForMaskedLM, source: Path, directory: Path, info: dict[str, Any]) -> None:
    """save_pretrained + the source's tokenizer files + pretrain.json into ``directory``."""
    import json

    core.save_pretrained(directory)
    copy_tokenizer_files(source, directory, core.config.max_length)
    (directory / "pretrain.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
