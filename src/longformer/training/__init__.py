"""What every training loop shares (`train-lm`, `finetune`, `pretrain-mlm`): AdamW with the no-decay
split and a step-function learning-rate schedule (`optim`), process-group setup for ``torchrun``
(`distributed`), and the run directory with crash-safe saves and the resume rule (`run`).

A bottom-layer package: it imports only ``longformer._files`` and ``longformer.errors`` (and torch),
never the models or the loops. A loop reads as setup / step / evaluate / save::

    ctx = init_distributed(device)
    run = RunDir(out, RunSpec("train-xyz", args={...}, schedule={"--steps": total}), ctx)
    resumed = run.start(resume=resume, extend=extend)         # None: a new run
    if resumed is not None and resumed.finished:
        raise run.finished_error(resumed)
    optimizer = adamw(model, lr, weight_decay); schedule = LRSchedule(optimizer, multiplier)
    ...  # load resumed.state, then per step: schedule.set(step); optimizer.step(); ...
    run.save(state, step=step, finished=step == total, write_files=...)
    shutdown(ctx)
"""
from .distributed import (DistContext, all_gather_objects, all_reduce_max, any_rank, barrier, broadcast_object,
                          init_distributed, report_on_rank0, shutdown)
from .optim import LRSchedule, adamw, linear_warmup_decay
from .run import (LAST, RUN_FILE, STATE_FILE, Resumed, RunDir, RunExistsError, RunFinished, RunSpec, StopFlag,
                  differences, fingerprint)

__all__ = [
    "DistContext", "all_gather_objects", "all_reduce_max", "any_rank", "barrier", "broadcast_object",
    "init_distributed", "report_on_rank0", "shutdown", "LRSchedule", "adamw", "linear_warmup_decay", "LAST", "RUN_FILE", "STATE_FILE",
    "Resumed", "RunDir", "RunExistsError", "RunFinished", "RunSpec", "StopFlag", "differences", "fingerprint",
]
