"""`longformer finetune`, `longformer predict` and `longformer export-hyperpartisan`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

SPLITS = ("leak-free", "paper", "stratified")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a Longformer encoder (classification, QA, token tagging)",
        description="Fine-tune a Longformer model dir on jsonl/csv files or the Hyperpartisan XML. "
                    "Runs under `torchrun --nproc_per_node N -m longformer finetune ...` as DDP. "
                    "Writes OUT/best (checkpoint), OUT/last (for --resume) and OUT/metrics.json.")
    # --epochs / --max-steps: a resumed run may only grow them, with --extend; the rate schedule
    # (warmup, decay to 0 at the last step) is then recomputed for the new total.
    p.add_argument("--task", required=True, help="classification, qa or token-classification (the registered tasks)")
    p.add_argument("--model", required=True,
                   help="Longformer model dir (config.json, weights, tokenizer.json) or a hub id")
    p.add_argument("--train", help="training file: .jsonl/.json/.csv (see docs/finetune.md for the columns)")
    p.add_argument("--validation", help="validation file, evaluated after every epoch to pick the best checkpoint")
    p.add_argument("--test", help="optional test file, evaluated once with the best checkpoint")
    p.add_argument("--hyperpartisan", metavar="DIR",
                   help="SemEval Hyperpartisan dir (articles XML, ground truth XML, hp-splits.json) instead of "
                        "--train/--validation/--test")
    p.add_argument("--split", choices=SPLITS, default="leak-free",
                   help="Hyperpartisan split: leak-free (default), paper (published, LEAKY), stratified")
    p.add_argument("--split-seed", type=int, default=0, help="seed of --split stratified")
    p.add_argument("--out", required=True, help="output dir")
    p.add_argument("--epochs", type=_positive_int, default=3)
    p.add_argument("--max-steps", type=_positive_int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="examples per process per micro-batch")
    p.add_argument("--eval-batch-size", type=_positive_int)
    p.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-length", type=_positive_int, help="max tokens per input (default: what the model takes)")
    p.add_argument("--truncate", action=argparse.BooleanOptionalAction, default=True,
                   help="cut inputs longer than --max-length to their first tokens, with a warning that counts them "
                        "(also in metrics.json); --no-truncate makes any over-long input an error (default: truncate)")
    p.add_argument("--doc-stride", type=int, default=128, help="QA: tokens shared by consecutive context windows")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (weights and optimizer stay fp32)")
    p.add_argument("--patience", type=_positive_int, help="stop after this many epochs without improvement")
    p.add_argument("--metric", help="validation metric that picks the best checkpoint (default: f1 / entity_f1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from OUT/last; every option that changes the result must be the "
                        "one the run was started with (the differences are listed otherwise)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: train a run further, to more --epochs or a larger --max-steps; the warmup and "
                        "the linear decay are recomputed for the new total (steps already run keep their rates)")
    p.add_argument("--save-every", type=_positive_int, help="also save OUT/last every N steps (for --resume)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_finetune)

    q = subparsers.add_parser("predict", help="write predictions of a fine-tuned checkpoint for a file",
                              description="Predict with a checkpoint written by `longformer finetune` (OUT/best). "
                                          "Writes one JSON line per example; metrics too when the file has labels.")
    q.add_argument("--model", required=True, help="a best/ dir written by `longformer finetune`, or a hub id")
    q.add_argument("--input", required=True)
    q.add_argument("--output", required=True)
    q.add_argument("--batch-size", type=_positive_int, default=8)
    q.add_argument("--truncate", action=argparse.BooleanOptionalAction, default=True,
                   help="cut over-long inputs with a counted warning (default); --no-truncate makes them an error")
    q.add_argument("--bf16", action="store_true")
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=_run_predict)

    e = subparsers.add_parser("export-hyperpartisan", help="write Hyperpartisan splits as jsonl (id, text, label)",
                              description="Read the SemEval Hyperpartisan XML as distributed and write "
                                          "train.jsonl, dev.jsonl, test.jsonl with markup stripped.")
    e.add_argument("directory", help="dir with the articles XML, ground-truth XML and hp-splits.json")
    e.add_argument("--out", required=True)
    e.add_argument("--split", choices=SPLITS, default="leak-free")
    e.add_argument("--split-seed", type=int, default=0)
    e.set_defaults(func=_run_export)

    s = subparsers.add_parser("finetune-summary", help="mean ± std over seeds of finished finetune runs",
                              description="Read OUT/metrics.json of each run dir and print a Markdown table of "
                                          "test/validation metrics, training time and peak memory (mean ± std).")
    s.add_argument("runs", nargs="+", help="--out dirs of `longformer finetune` runs")
    s.set_defaults(func=_run_summary)


def _run_finetune(args: argparse.Namespace) -> int:
    from ..training import RunFinished, report_on_rank0
    from .data import DataError
    from .train import FinetuneConfig, finetune

    if args.extend and not args.resume:
        raise DataError("--extend continues an existing run: pass it with --resume (and more --epochs or --max-steps)")
    cfg = FinetuneConfig(
        task=args.task, model=args.model, out=args.out, train=args.train, validation=args.validation,
        test=args.test, hyperpartisan=args.hyperpartisan, split=args.split, split_seed=args.split_seed,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_length=args.max_length, truncate=args.truncate, doc_stride=args.doc_stride, lr=args.lr,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm,
        gradient_checkpointing=args.gradient_checkpointing, bf16=args.bf16, patience=args.patience,
        metric=args.metric, seed=args.seed, resume=args.resume, extend=args.extend, save_every=args.save_every,
        eval_batch_size=args.eval_batch_size, device=args.device, progress=not args.no_progress)
    _check_values(cfg)
    try:
        with report_on_rank0():
            finetune(cfg)
    except RunFinished as done:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank knows it: say it once
            print(f"longformer finetune: {done}", file=sys.stderr)
    return 0


def _check_values(cfg: Any) -> None:
    """Option values no run can use (argparse checks the types, not these ranges)."""
    from .data import DataError

    problems = []
    if not cfg.lr > 0:
        problems.append(f"--lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        problems.append(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    if not 0 <= cfg.warmup_ratio < 1:
        problems.append(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.max_grad_norm < 0:
        problems.append(f"--max-grad-norm must be >= 0 (0 = no clipping), got {cfg.max_grad_norm}")
    if cfg.doc_stride < 0:
        problems.append(f"--doc-stride must be >= 0, got {cfg.doc_stride}")
    if problems:
        raise DataError("; ".join(problems))


def _run_predict(args: argparse.Namespace) -> int:
    from .predict import predict_file

    metrics = predict_file(args.model, args.input, args.output, batch_size=args.batch_size,
                           truncate=args.truncate, bf16=args.bf16, device=args.device)
    print(f"predictions written to {args.output}", file=sys.stderr)
    if metrics is not None:
        print(json.dumps(metrics))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .hyperpartisan import export_jsonl, load_splits, split_report

    paths = export_jsonl(args.directory, args.out, args.split, args.split_seed)
    report = split_report(load_splits(args.directory, args.split, args.split_seed))
    for name, path in paths.items():
        print(f"{path}: {report[name]}", file=sys.stderr)
    print(json.dumps({"split": args.split, **report}))
    return 0


def _run_summary(args: argparse.Namespace) -> int:
    from .summary import summarize

    print(summarize(args.runs)[1])
    return 0
