"""`longformer train-lm`, `eval-lm` and `generate`: the character-level language model commands."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from ..attention import IMPLS
from .config import PRESETS


def register(subparsers) -> None:
    p = subparsers.add_parser("train-lm", help="train a character-level causal Longformer (staged phases)",
                              description="Train a char/byte-level causal Longformer with the paper's staged "
                                          "schedule. Multi-process: torchrun --nproc_per_node K -m longformer train-lm ...")
    p.add_argument("--data", required=True, help="a text file, or 'enwik8' / 'text8' (downloaded and checksummed)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, type=Path,
                   help="run directory: last/ (trainer_state.pt, config.json, run.json), log.csv, curve.png")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (the phases keep their shares)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from OUT/last; every argument that changes the result must be "
                        "the one the run was started with (the differences are listed otherwise)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: train a run further, to a larger --steps; the extra steps go to the last "
                        "phase (same rate and length), as if it had been that much longer from the start")
    p.add_argument("--vocab", choices=("bytes", "text8"), default=None,
                   help="symbols: bytes (256) or text8 (27: a-z and space); default from --data, else bytes")
    p.add_argument("--full-attention", action="store_true", help="baseline: every window covers the whole sequence")
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop-at", type=int, default=None, help="save and stop after this step, as a kill would")
    p.add_argument("--attn-impl", default="auto", choices=IMPLS)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("eval-lm", help="bits per character of a trained LM over a split")
    e.add_argument("--checkpoint", required=True, type=Path, help="run directory written by train-lm")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=("train", "valid", "test"))
    e.add_argument("--seq-len", type=int, required=True, help="window length N (any N, also beyond training)")
    e.add_argument("--stride", type=int, default=None,
                   help="S: every scored symbol has at least S symbols of context; windows overlap by S (default N/2)")
    e.add_argument("--max-symbols", type=int, default=None, help="score only the first this-many symbols")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--bf16", action="store_true")
    e.add_argument("--attn-impl", default="auto", choices=IMPLS)
    e.add_argument("--device", default="cpu", help="e.g. cpu, cuda")
    e.add_argument("--json", action="store_true", help="print one JSON object (with a 'bpc' field) on stdout")
    e.set_defaults(func=run_eval)

    g = subparsers.add_parser("generate", help="sample text from a trained LM (incremental decoding)")
    g.add_argument("--checkpoint", required=True, type=Path)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=run_generate)


def _vocab_for(data_vocab: str | None, requested: str | None) -> str:
    from .config import LMError

    if requested is not None and data_vocab is not None and requested != data_vocab:
        raise LMError(f"--vocab {requested} conflicts with the dataset's vocab {data_vocab}")
    return requested or data_vocab or "bytes"


def run_train(args: argparse.Namespace) -> int:
    from ..training import RunFinished, report_on_rank0
    from .config import LMError, full_attention, get_preset
    from .data import resolve_data
    from .train import RunOptions, train

    for flag in ("steps", "grad_accum", "stop_at"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise LMError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.extend and not args.resume:
        raise LMError("--extend continues an existing run: pass it with --resume (and a larger --steps)")
    path, data_vocab = resolve_data(args.data)
    vocab = _vocab_for(data_vocab, args.vocab)
    preset = get_preset(args.preset, vocab)
    if args.full_attention:
        preset = full_attention(preset)
    t = preset.train
    t = replace(t, grad_accum=args.grad_accum or t.grad_accum, bf16=args.bf16 or t.bf16,
                seed=t.seed if args.seed is None else args.seed)
    model = replace(preset.model, attn_impl=args.attn_impl,
                    grad_checkpointing=args.grad_checkpointing or preset.model.grad_checkpointing)
    preset = replace(preset, model=model, train=t)
    opts = RunOptions(data=path, out=args.out, vocab=vocab, resume=args.resume, extend=args.extend,
                      steps=args.steps, preset_name=args.preset, stop_at=args.stop_at,
                      progress=not args.no_progress, device=args.device)
    try:
        with report_on_rank0():
            row = train(preset, opts)
    except RunFinished as done:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank knows it: say it once
            print(f"longformer train-lm: {done}", file=sys.stderr)
        return 0
    if row:
        print(f"done: step {row['step']}, valid bpc {row['val_bpc']}; run directory {args.out}", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import SymbolStream, resolve_data
    from .evaluate import evaluate_bpc

    from .config import LMError

    if args.batch_size < 1 or (args.max_symbols is not None and args.max_symbols < 2):
        raise LMError(f"--batch-size must be >= 1 and --max-symbols >= 2, got {args.batch_size} and {args.max_symbols}")
    model, state = load_model(args.checkpoint, attn_impl=args.attn_impl)
    model.to(args.device)
    path, data_vocab = resolve_data(args.data)
    vocab = _vocab_for(data_vocab, state["vocab"])
    stride = args.seq_len // 2 if args.stride is None else args.stride
    stream = SymbolStream(path, args.split, vocab)
    res = evaluate_bpc(model, stream, args.seq_len, stride, max_symbols=args.max_symbols,
                       batch_size=args.batch_size, progress=not args.json, bf16=args.bf16)
    res.update(split=args.split, data=str(path), checkpoint=str(args.checkpoint), trained_steps=state["step"],
               trained_seq_len=_trained_seq_len(state), receptive_field=model.config.receptive_field())
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.split} bpc {res['bpc']:.4f} over {res['scored']} symbols "
              f"(N={args.seq_len}, every symbol with >= {stride} symbols of context)")
    return 0


def _trained_seq_len(state: dict) -> int:
    phases = state["train_config"]["phases"]
    return phases[min(state["phase"], len(phases) - 1)]["seq_len"]


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model
    from .config import LMError
    from .data import decode, encode
    from .generate import generate

    model, state = load_model(args.checkpoint)
    symbols = encode(args.prompt, state["vocab"])
    if not symbols:
        raise LMError("--prompt must not be empty")
    gen = torch.Generator().manual_seed(args.seed)
    out = generate(model, torch.tensor([symbols]), args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, generator=gen)
    print(decode(out[0].tolist(), state["vocab"]))
    return 0
