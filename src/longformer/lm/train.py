"""Staged training of the character-level Longformer (the `train-lm` command's core).

Phases grow the sequence length and the windows and lower the learning rate, as in the paper.
Everything a resume needs is checkpointed, so "train N steps" and "train N/2, get killed, resume"
end with identical weights. Multi-process: launch with `torchrun --nproc_per_node K -m longformer
train-lm ...` (DDP over gloo on CPU); each process draws its own random windows.

The run directory, the resume rule and ``--extend`` are `longformer.training`'s: ``--extend --steps
M`` adds the extra steps to the LAST phase (its constant rate and length), so the result equals a
run whose last phase was that much longer from the start.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .._files import atomic_write
from ..errors import ResumeError
from ..training import (LAST, DistContext, LRSchedule, RunDir, RunSpec, StopFlag, adamw, all_gather_objects,
                        any_rank, fingerprint, init_distributed, shutdown)
from .checkpoint import LEGACY_CHECKPOINT, train_config_from_dict, train_config_to_dict, write_config
from .config import LMConfig, LMError, Phase, Preset, TrainConfig, linear_windows
from .data import SymbolStream
from .evaluate import evaluate_bpc
from .model import LongformerLM

LOG_FIELDS = ["step", "phase", "seq_len", "lr", "train_loss", "train_bpc", "val_bpc", "tokens_per_s", "elapsed_s"]


def rescale_phases(phases: list[Phase], total: int) -> list[Phase]:
    """Shrink or stretch the schedule to ``total`` steps, keeping each phase's share (>= 1 step)."""
    if total < len(phases):
        raise LMError(f"--steps must be >= the number of phases ({len(phases)}), got {total}")
    old = sum(p.steps for p in phases)
    steps = [max(1, round(p.steps * total / old)) for p in phases]
    steps[-1] += total - sum(steps)
    if steps[-1] < 1:
        raise LMError(f"--steps {total} is too small for {len(phases)} phases")
    return [replace(p, steps=s, warmup=min(s - 1, round(p.warmup * s / p.steps))) for p, s in zip(phases, steps)]


def extend_phases(phases: list[Phase], total: int) -> list[Phase]:
    """The schedule of ``--extend --steps total``: the last phase gets the extra steps (same rate,
    same warmup), so every step already run keeps its phase and rate."""
    extra = total - sum(p.steps for p in phases)
    if extra < 0:
        raise LMError(f"--steps {total} is shorter than the run's {sum(p.steps for p in phases)} steps")
    return [*phases[:-1], replace(phases[-1], steps=phases[-1].steps + extra)]


def phase_at(phases: list[Phase], step: int) -> tuple[int, int]:
    """(phase index, step within that phase) of global step ``step`` (0-based)."""
    for i, p in enumerate(phases):
        if step < p.steps:
            return i, step
        step -= p.steps
    return len(phases) - 1, phases[-1].steps


def lr_multiplier(phases: list[Phase], step: int) -> float:
    """lr(step) / phases[0].lr: each phase warms up linearly to its own peak, then stays constant
    (the paper's schedule: a constant rate per phase, halved from phase to phase)."""
    i, s = phase_at(phases, step)
    p = phases[i]
    warm = min(1.0, (s + 1) / p.warmup) if p.warmup > 0 else 1.0
    return p.lr * warm / phases[0].lr


@dataclass
class RunOptions:
    data: Path
    out: Path
    vocab: str
    resume: bool = False
    extend: bool = False  # with resume: --steps may exceed the run's (the last phase grows)
    steps: int | None = None  # total steps: rescales the preset's phases (None: the preset's own)
    preset_name: str | None = None  # stored with the run, so a resume with another --preset is caught
    stop_at: int | None = None  # save and stop after this global step (as if killed there)
    progress: bool = True
    device: str = "cpu"  # "cpu" or "cuda" (with torchrun: one GPU per process, NCCL)


def run_spec(preset: Preset, opts: RunOptions, world: int) -> RunSpec:
    """What a resume must match: the data (by content), vocab, preset and its resolved configs, the
    number of processes; the schedule length is ``--steps``. How attention is computed
    (``attn_impl``), gradient checkpointing and the device do not change the result."""
    model = preset.model.to_dict()
    for free in ("attn_impl", "grad_checkpointing"):
        model.pop(free)
    model["vocab"] = opts.vocab
    total = opts.steps if opts.steps is not None else preset.train.total_steps
    args = {"--data": fingerprint(opts.data), "--vocab": opts.vocab, "--preset": opts.preset_name,
            "model": model, "train": train_config_to_dict(preset.train), "processes": world}
    return RunSpec("train-lm", args, {"--steps": total}, extend_hint=f"--extend --steps M (M > {total})")


def train(preset: Preset, opts: RunOptions) -> dict:
    """Run (or resume) a training run in ``opts.out``. Returns the last logged row as a dict.

    Raises `RunFinished` when resuming a run that is already complete, `ResumeError` when the
    arguments differ from the run's, `RunExistsError` for an existing run without ``resume``."""
    ctx = init_distributed(opts.device)
    try:
        return _train(preset, opts, ctx)
    finally:
        shutdown(ctx)


def _train(preset: Preset, opts: RunOptions, ctx: DistContext) -> dict:
    # --- setup: the run directory decides new vs resumed; the configs come from the run when resumed
    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    out = Path(opts.out)
    run = RunDir(out, run_spec(preset, opts, world), ctx)
    if opts.resume and not (out / LAST).exists() and (out / LEGACY_CHECKPOINT).is_file():
        raise ResumeError(f"{out} holds a run in the older layout ({LEGACY_CHECKPOINT} without stored arguments); "
                          "it cannot be resumed safely: start a new --out (eval-lm and generate still read it)")
    resumed = run.start(resume=opts.resume, extend=opts.extend, markers=(LEGACY_CHECKPOINT,),
                        log=lambda m: print(m, flush=True))
    if resumed is not None and resumed.finished:
        raise run.finished_error(resumed)
    model_cfg = replace(preset.model, vocab=opts.vocab)
    cfg = preset.train
    if opts.steps is not None:
        cfg = replace(cfg, phases=rescale_phases(cfg.phases, opts.steps))
    state = resumed.state if resumed is not None else None
    if state is not None:
        model_cfg = LMConfig.from_dict(state["model_config"])
        model_cfg.attn_impl = preset.model.attn_impl  # how to compute attention is not part of the run
        model_cfg.grad_checkpointing = preset.model.grad_checkpointing
        cfg = train_config_from_dict(state["train_config"])  # the phases the run was trained with
        if resumed.extended:
            cfg = replace(cfg, phases=extend_phases(cfg.phases, run.spec.schedule["--steps"]))
    phases = cfg.phases
    for p in phases:
        if p.batch_size % (world * cfg.grad_accum):
            raise LMError(f"phase batch_size {p.batch_size} must be divisible by world_size x grad_accum = "
                          f"{world * cfg.grad_accum}")

    torch.manual_seed(cfg.seed)
    model = LongformerLM(model_cfg).to(device)
    train_stream = SymbolStream(opts.data, "train", opts.vocab)
    valid_stream = SymbolStream(opts.data, "valid", opts.vocab)
    optimizer = adamw(model, phases[0].lr, cfg.weight_decay, betas=cfg.betas)
    schedule = LRSchedule(optimizer, lambda s: lr_multiplier(phases, s))
    data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step, elapsed = 0, 0.0
    on_cuda = device.type == "cuda"
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        data_gen.set_state(state["data_rng"][rank])
        step, elapsed = state["step"], state["elapsed_s"]
        if on_cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if on_cuda else None)
    log_path = out / "log.csv"
    if rank == 0:
        _start_log(log_path, step if state is not None else None)

    def save(finished: bool) -> None:
        rngs = all_gather_objects(ctx, data_gen.get_state())
        snapshot = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
            "data_rng": rngs, "step": step, "elapsed_s": elapsed,
            "phase": phase_at(phases, max(step - 1, 0))[0], "model_config": model.config.to_dict(),
            "train_config": train_config_to_dict(cfg), "vocab": opts.vocab, "data": str(opts.data),
        }
        extra = {"step": step, "vocab": opts.vocab, "data": str(opts.data)}
        run.save(snapshot, step=step, finished=finished,
                 write_files=lambda d: write_config(d, model.config, cfg, extra))

    total = cfg.total_steps
    last_row: dict = {}
    bar = tqdm(total=total, initial=step, desc="train-lm", unit="step", disable=not (opts.progress and rank == 0))
    window = _Window()
    with StopFlag() as stop:
        try:
            while step < total:
                # --- step
                i, _ = phase_at(phases, step)
                p = phases[i]
                model.set_windows(linear_windows(model_cfg.n_layer, p.window_bottom, p.window_top))
                t0 = time.perf_counter()
                lr = schedule.set(step)
                loss_sum = _step(ddp_model, model, optimizer, train_stream, data_gen, p, cfg, world, device)
                step += 1
                dt = time.perf_counter() - t0
                elapsed += dt
                window.add(loss_sum, p.batch_size * p.seq_len, dt)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.3f}", bpc=f"{loss_sum / math.log(2):.3f}",
                                tok_s=f"{window.tokens_per_s:.0f}", phase=i + 1)
                # --- evaluate and log
                do_eval = step % cfg.eval_every == 0 or step == total
                if step % cfg.log_every == 0 or do_eval:
                    val_bpc = f"{_validate(model, valid_stream, p, cfg):.4f}" if do_eval else ""
                    last_row = window.row(step, i + 1, p.seq_len, lr, val_bpc, elapsed)
                    if rank == 0:
                        with open(log_path, "a", newline="") as f:
                            csv.DictWriter(f, LOG_FIELDS).writerow(last_row)
                        if do_eval:
                            bar.write(f"step {step}: train bpc {last_row['train_bpc']}, valid bpc {val_bpc}")
                            plot_log(log_path, out / "curve.png")
                    window = _Window()
                # --- save; a signal may reach the processes at different steps: they agree on stopping
                # here, or the ones that stop would leave the others waiting in the next all-reduce forever.
                stopping = any_rank(ctx, stop.set or (opts.stop_at is not None and step >= opts.stop_at))
                if step % cfg.save_every == 0 or step == total or stopping:
                    save(finished=step == total)
                if stopping:
                    if rank == 0:
                        why = f"signal {stop.signum}" if stop.set else f"--stop-at {opts.stop_at}"
                        bar.write(f"stopped by {why} at step {step}; checkpoint saved in {out} (continue with --resume)")
                    break
        finally:
            bar.close()
    if stop.set:
        raise KeyboardInterrupt(f"stopped by signal {stop.signum}")
    return last_row


def _step(ddp_model: torch.nn.Module, model: LongformerLM, optimizer: torch.optim.Optimizer, stream: SymbolStream,
          data_gen: torch.Generator, p: Phase, cfg: TrainConfig, world: int, device: torch.device) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss (nats/symbol)."""
    micro = p.batch_size // (world * cfg.grad_accum)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for a in range(cfg.grad_accum):
        x, y = stream.random_batch(micro, p.seq_len, data_gen)
        x, y = x.to(device), y.to(device)
        sync = a == cfg.grad_accum - 1 or world == 1
        ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
        with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = ddp_model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        (loss / cfg.grad_accum).backward()
        loss_sum += float(loss.detach()) / cfg.grad_accum
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"training loss became {loss_sum}; lower the learning rate")
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss_sum


class _Window:
    """Loss and throughput since the previous log row."""

    def __init__(self) -> None:
        self.loss, self.tokens, self.time, self.steps = 0.0, 0, 0.0, 0

    def add(self, loss: float, tokens: int, seconds: float) -> None:
        self.loss += loss
        self.tokens += tokens
        self.time += seconds
        self.steps += 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.time, 1e-9)

    def row(self, step: int, phase: int, seq_len: int, lr: float, val_bpc: str, elapsed: float) -> dict:
        mean = self.loss / max(self.steps, 1)
        return {"step": step, "phase": phase, "seq_len": seq_len, "lr": f"{lr:.3e}", "train_loss": f"{mean:.4f}",
                "train_bpc": f"{mean / math.log(2):.4f}", "val_bpc": val_bpc,
                "tokens_per_s": f"{self.tokens_per_s:.0f}", "elapsed_s": f"{elapsed:.1f}"}


def _start_log(log_path: Path, resumed_step: int | None) -> None:
    """A new log.csv, keeping (on resume) the complete rows up to the checkpoint: later rows, logged
    before a kill, are redone by this run (and a row cut by the kill is dropped)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if resumed_step is not None and log_path.is_file():
        with open(log_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if all(r.get(k) is not None for k in LOG_FIELDS)
                    and r["step"].isdigit() and int(r["step"]) <= resumed_step]
    text = io.StringIO()
    writer = csv.DictWriter(text, LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(log_path, lambda f: f.write(text.getvalue().encode()))


def _validate(model: LongformerLM, stream: SymbolStream, p: Phase, cfg: TrainConfig) -> float:
    # Every process holds identical weights and computes the same number; rank 0 logs it.
    res = evaluate_bpc(model, stream, p.seq_len, p.seq_len // 2, max_symbols=cfg.eval_tokens, bf16=cfg.bf16)
    return res["bpc"]


def plot_log(log_path: Path, png_path: Path) -> None:
    """Train and validation bpc against step, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([int(r["step"]) for r in rows], [float(r["train_bpc"]) for r in rows], label="train (mean since the previous row)")
    val = [(int(r["step"]), float(r["val_bpc"])) for r in rows if r["val_bpc"]]
    if val:
        ax.plot(*zip(*val), "o-", label="valid")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
