"""Staged training of the character-level Longformer (the `train-lm` command's core).

Phases grow the sequence length and the windows and lower the learning rate, as in the paper.
Everything a resume needs is checkpointed, so "train N steps" and "train N/2, get killed, resume"
end with identical weights. Multi-process: launch with `torchrun --nproc_per_node K -m longformer
train-lm ...` (DDP over gloo on CPU); each process draws its own random windows.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .._files import atomic_write
from .checkpoint import load_state, save_run, train_config_from_dict, train_config_to_dict
from .config import LMConfig, Phase, Preset, TrainConfig, linear_windows
from .data import SymbolStream
from .evaluate import evaluate_bpc
from .model import LongformerLM

LOG_FIELDS = ["step", "phase", "seq_len", "lr", "train_loss", "train_bpc", "val_bpc", "tokens_per_s", "elapsed_s"]


def rescale_phases(phases: list[Phase], total: int) -> list[Phase]:
    """Shrink or stretch the schedule to ``total`` steps, keeping each phase's share (>= 1 step)."""
    if total < len(phases):
        raise ValueError(f"--steps must be >= the number of phases ({len(phases)}), got {total}")
    old = sum(p.steps for p in phases)
    steps = [max(1, round(p.steps * total / old)) for p in phases]
    steps[-1] += total - sum(steps)
    if steps[-1] < 1:
        raise ValueError(f"--steps {total} is too small for {len(phases)} phases")
    return [replace(p, steps=s, warmup=min(s - 1, round(p.warmup * s / p.steps))) for p, s in zip(phases, steps)]


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
    stop_at: int | None = None  # save and stop after this global step (as if killed there)
    progress: bool = True
    device: str = "cpu"  # "cpu" or "cuda" (with torchrun: one GPU per process, NCCL)


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum


def _dist_info(device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device). torchrun sets WORLD_SIZE / LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def train(preset: Preset, opts: RunOptions) -> dict:
    """Run (or resume) a training run in ``opts.out``. Returns the last logged row as a dict."""
    rank, world, device = _dist_info(opts.device)
    out = Path(opts.out)
    model_cfg, cfg = preset.model, preset.train
    state = None
    if opts.resume and (out / "checkpoint.pt").is_file():
        state = load_state(out)
        model_cfg = LMConfig.from_dict(state["model_config"])
        model_cfg.attn_impl = preset.model.attn_impl  # how to compute attention is not part of the run
        cfg = train_config_from_dict(state["train_config"])
    elif opts.resume and rank == 0:
        print(f"--resume: no checkpoint in {out} yet, starting a new run")
    elif (out / "checkpoint.pt").is_file():
        raise FileExistsError(f"--out {out} already holds a run: pass --resume to continue it, or choose another --out")
    if state is not None and len(state["data_rng"]) != world:
        raise ValueError(f"--resume: the run in {out} used {len(state['data_rng'])} processes; resume it with the same "
                         f"number (got {world}) so every process continues its own data stream")
    if state is not None and state["vocab"] != opts.vocab:
        raise ValueError(f"--resume: the run in {out} was trained with vocab {state['vocab']!r}, not {opts.vocab!r}")
    if model_cfg.vocab != opts.vocab:
        model_cfg = replace(model_cfg, vocab=opts.vocab)
    phases = cfg.phases
    for p in phases:
        if p.batch_size % (world * cfg.grad_accum):
            raise ValueError(f"phase batch_size {p.batch_size} must be divisible by world_size x grad_accum = {world * cfg.grad_accum}")

    torch.manual_seed(cfg.seed)
    model = LongformerLM(model_cfg).to(device)
    train_stream = SymbolStream(opts.data, "train", opts.vocab)
    valid_stream = SymbolStream(opts.data, "valid", opts.vocab)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=phases[0].lr, betas=cfg.betas,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(phases, s))
    data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        data_gen.set_state(state["data_rng"][rank])
        step, elapsed = state["step"], state["elapsed_s"]
    on_cuda = device.startswith("cuda")
    if state is not None and on_cuda and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if on_cuda else None)

    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    log_path = out / "log.csv"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        if state is not None and log_path.is_file():
            # Rows logged after the checkpoint (before a kill) are redone by this run: drop them.
            with open(log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def save() -> None:
        rngs = [data_gen.get_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, data_gen.get_state())
        if rank != 0:
            return
        snapshot = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
            "data_rng": rngs, "step": step, "elapsed_s": elapsed,
            "phase": phase_at(phases, max(step - 1, 0))[0], "model_config": model.config.to_dict(),
            "train_config": train_config_to_dict(cfg), "vocab": opts.vocab, "data": str(opts.data),
        }
        save_run(out, snapshot, model.config, cfg, {"step": step, "vocab": opts.vocab, "data": str(opts.data)})

    total = cfg.total_steps
    last_row: dict = {}
    bar = tqdm(total=total, initial=step, desc="train-lm", unit="step", disable=not (opts.progress and rank == 0))
    window_loss, window_tokens, window_time, window_steps = 0.0, 0, 0.0, 0
    try:
        while step < total:
            i, _ = phase_at(phases, step)
            p = phases[i]
            model.set_windows(linear_windows(model_cfg.n_layer, p.window_bottom, p.window_top))
            micro = p.batch_size // (world * cfg.grad_accum)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for a in range(cfg.grad_accum):
                x, y = train_stream.random_batch(micro, p.seq_len, data_gen)
                x, y = x.to(device), y.to(device)
                sync = a == cfg.grad_accum - 1 or world == 1
                ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
                with ctx, torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    logits = ddp_model(x)
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
                (loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach()) / cfg.grad_accum
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"training loss became {loss_sum} at step {step}; lower the learning rate")
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            window_loss += loss_sum
            window_tokens += p.batch_size * p.seq_len
            window_time += dt
            window_steps += 1
            bar.update(1)
            tok_s = window_tokens / max(window_time, 1e-9)
            bar.set_postfix(loss=f"{loss_sum:.3f}", bpc=f"{loss_sum / math.log(2):.3f}", tok_s=f"{tok_s:.0f}", phase=i + 1)
            do_eval = step % cfg.eval_every == 0 or step == total
            if step % cfg.log_every == 0 or do_eval or step == total:
                val_bpc = ""
                if do_eval:
                    val_bpc = f"{_validate(model, valid_stream, p, cfg):.4f}"
                mean = window_loss / window_steps
                last_row = {"step": step, "phase": i + 1, "seq_len": p.seq_len, "lr": f"{lr:.3e}",
                            "train_loss": f"{mean:.4f}", "train_bpc": f"{mean / math.log(2):.4f}", "val_bpc": val_bpc,
                            "tokens_per_s": f"{tok_s:.0f}", "elapsed_s": f"{elapsed:.1f}"}
                if rank == 0:
                    with open(log_path, "a", newline="") as f:
                        csv.DictWriter(f, LOG_FIELDS).writerow(last_row)
                    if do_eval:
                        bar.write(f"step {step}: train bpc {last_row['train_bpc']}, valid bpc {val_bpc}")
                        plot_log(log_path, out / "curve.png")
                window_loss, window_tokens, window_time, window_steps = 0.0, 0, 0.0, 0
            stopping = stop.signum is not None or (opts.stop_at is not None and step >= opts.stop_at)
            if world > 1:
                # A signal may reach the processes at different steps: agree on stopping at this step,
                # or the ones that stop would leave the others waiting in the next all-reduce forever.
                flag = torch.tensor([int(stopping)])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag.item())
            if step % cfg.save_every == 0 or step == total or stopping:
                save()
            if stopping:
                if rank == 0:
                    why = f"signal {stop.signum}" if stop.signum is not None else f"--stop-at {opts.stop_at}"
                    bar.write(f"stopped by {why} at step {step}; checkpoint saved in {out} (continue with --resume)")
                break
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if stop.signum is not None:
        raise KeyboardInterrupt(f"stopped by signal {stop.signum}")
    return last_row


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
