"""`longformer pretrain-mlm` (continued MLM pretraining of a long model, paper section 5) and
`longformer eval-mlm` (MLM bits per token of a model on a text at a given length, Table 5's metric).

Heavy imports stay inside the command functions, so `longformer --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    from .config import PretrainConfig

    d = PretrainConfig("", [], "")
    p = subparsers.add_parser(
        "pretrain-mlm", help="continue masked-language-model pretraining of a (long) model",
        description="Continued MLM pretraining (the Longformer paper's section 5 recipe): documents packed into "
                    "full --max-length sequences, 15%% masking (80/10/10), AdamW with warmup and linear decay. "
                    "Writes OUT/last (resume point, loadable with from_pretrained), OUT/model (the final model) "
                    "and OUT/metrics.json. Several processes: torchrun --nproc_per_node K -m longformer pretrain-mlm ...")
    p.add_argument("--model", required=True, help="model dir or hub id (e.g. a `longformer convert` output); "
                                                  "a model without an MLM head gets one tied to its word embeddings")
    p.add_argument("--train", required=True, nargs="+", help="text files (one document each) or .jsonl files "
                                                             "(one {\"text\": ...} document per line)")
    p.add_argument("--validation", nargs="+", default=[], help="files scored every --eval-every steps (MLM bpc)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per packed sequence (default 4096)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per step (default: the paper's 64 sequences per step / (batch x processes))")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr}, the paper's)")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help=f"linear warmup steps, capped at --steps/10 (default {d.warmup}, the paper's)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0 = no clipping")
    p.add_argument("--mask-probability", type=float, default=d.mask_probability)
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the MLM head (dense, LayerNorm, bias): fit a new head to a sentence encoder")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute layers in backward (less memory)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-seed", type=int, default=d.eval_seed, help="seed of the validation's fixed mask")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same arguments)")
    p.add_argument("--extend", action="store_true", help="with --resume: allow a larger --steps")
    p.add_argument("--stop-at", type=int, default=None, help="save and stop after this step, as a kill would")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_pretrain)

    e = subparsers.add_parser(
        "eval-mlm", help="MLM bits per masked token of a model on a text at a given length",
        description="MLM bpc as in the Longformer paper's Table 5: mean cross-entropy in bits of the masked "
                    "tokens, under a fixed 15%% mask drawn from --seed over the whole text before it is cut into "
                    "--max-length sequences (so different lengths score the same tokens). Prints one JSON object.")
    e.add_argument("--model", required=True, help="model dir or hub id (a model without an MLM head is refused)")
    e.add_argument("--file", required=True, nargs="+", help="text or .jsonl files (as pretrain-mlm's --train)")
    e.add_argument("--max-length", type=int, required=True, help="tokens per sequence ([CLS] and [SEP] included)")
    e.add_argument("--seed", type=int, default=0, help="seed of the mask (default 0)")
    e.add_argument("--mask-probability", type=float, default=0.15)
    e.add_argument("--max-tokens", type=int, default=None, help="score only the first this-many tokens of the text")
    e.add_argument("--batch-size", type=int, default=1)
    e.add_argument("--bf16", action="store_true")
    e.add_argument("--device", default=None)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_run_eval)


def _run_pretrain(args: argparse.Namespace) -> int:
    from ..training import RunFinished
    from .config import PretrainConfig
    from .train import pretrain

    cfg = PretrainConfig(
        model=args.model, train=args.train, out=args.out, validation=args.validation, max_length=args.max_length,
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, mask_probability=args.mask_probability,
        freeze_encoder=args.freeze_encoder, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed, eval_every=args.eval_every, eval_seed=args.eval_seed, eval_batch_size=args.eval_batch_size,
        save_every=args.save_every, resume=args.resume, extend=args.extend, stop_at=args.stop_at, device=args.device,
        progress=not args.no_progress)
    try:
        pretrain(cfg)
    except RunFinished as done:
        print(f"longformer pretrain-mlm: {done}", file=sys.stderr)
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_file

    result = evaluate_file(args.model, args.file, args.max_length, seed=args.seed, probability=args.mask_probability,
                           max_tokens=args.max_tokens, batch_size=args.batch_size, bf16=args.bf16, device=args.device,
                           progress=not args.no_progress)
    print(json.dumps(result))
    return 0
