"""`longformer summarize --model DIR FILE...` and `--jsonl IN --output OUT`: summaries with an LED.

Heavy imports (torch, tokenizers) stay inside the functions so `longformer --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "summarize",
        help="summarise long documents with an LED checkpoint dir",
        description=(
            "Summarise text files (or a JSON-lines file) with an LED dir in the Hugging Face layout "
            "(config.json, model.safetensors or pytorch_model.bin, tokenizer.json). Generation options and "
            "their defaults are transformers' (unset options take the checkpoint's generation_config.json)."
        ),
    )
    p.add_argument("--model", required=True, help="LED checkpoint dir or hub id org/name[@revision] (with its tokenizer)")
    p.add_argument("files", nargs="*", help="text files to summarise (one summary each, printed)")
    p.add_argument("--jsonl", help="batch mode: JSON-lines input, one object per line with a text field")
    p.add_argument("--output", help="batch mode: JSON-lines output (input objects + 'summary'); resumes if interrupted")
    p.add_argument("--text-field", default="text", help="field of each --jsonl object holding the document (default text)")
    p.add_argument("--batch-size", type=int, default=1, help="documents per generate call (default 1)")
    p.add_argument("--truncate", action="store_true",
                   help="cut documents longer than the encoder's position table instead of failing")
    p.add_argument("--no-global-first", action="store_true",
                   help="no global token (transformers' default); by default the first token is global")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--seed", type=int, default=0, help="torch seed (matters with --do-sample)")
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--min-length", type=int)
    g.add_argument("--num-beams", type=int)
    g.add_argument("--do-sample", action="store_true", default=None)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--no-repeat-ngram-size", type=int)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--length-penalty", type=float)
    g.add_argument("--early-stopping", choices=("true", "false", "never"))
    p.set_defaults(func=run)


def generation_settings(args: argparse.Namespace) -> dict:
    early = {"true": True, "false": False, "never": "never", None: None}[args.early_stopping]
    return dict(max_new_tokens=args.max_new_tokens, min_length=args.min_length, num_beams=args.num_beams,
                do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty,
                length_penalty=args.length_penalty, early_stopping=early)


class Summarizer:
    """Tokenise, batch (right padding), generate, decode."""

    def __init__(self, model_dir: str | Path, dtype: str = "float32", truncate: bool = False, global_first: bool = True,
                 settings: dict | None = None) -> None:
        import torch

        from .._files import resolve_checkpoint
        from ..encoder.tokenizer import load_tokenizer
        from .modeling import LEDForConditionalGeneration

        model_dir = resolve_checkpoint(model_dir)  # a local dir or a hub id
        self.tokenizer = load_tokenizer(model_dir)
        self.model = LEDForConditionalGeneration.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        self.max_tokens = self.model.config.max_encoder_position_embeddings
        self.truncate = truncate
        self.global_first = global_first
        self.settings = settings or {}

    def encode(self, text: str, name: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.max_tokens:
            if not self.truncate:
                raise ValueError(
                    f"{name}: {len(ids)} tokens, but the model reads at most {self.max_tokens} "
                    "(max_encoder_position_embeddings); pass --truncate to cut it"
                )
            print(f"note: {name}: cut from {len(ids)} to {self.max_tokens} tokens (--truncate)", file=sys.stderr)
            ids = ids[: self.max_tokens]
        return ids

    def summarize(self, docs: list[list[int]]) -> list[str]:
        import torch

        T = max(len(d) for d in docs)
        pad = self.model.config.pad_token_id
        ids = torch.full((len(docs), T), pad, dtype=torch.long)
        mask = torch.zeros(len(docs), T, dtype=torch.long)
        for i, d in enumerate(docs):
            ids[i, : len(d)] = torch.tensor(d, dtype=torch.long)
            mask[i, : len(d)] = 1
        glob = None if self.global_first else torch.zeros_like(ids)
        out = self.model.generate(ids, mask, glob, **self.settings)
        return [self.tokenizer.decode(row.tolist(), skip_special_tokens=True).strip() for row in out]


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    if bool(args.jsonl) != bool(args.output):
        print("longformer summarize: error: --jsonl and --output go together", file=sys.stderr)
        return 2
    if not args.files and not args.jsonl:
        print("longformer summarize: error: give FILE... or --jsonl IN --output OUT", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"longformer summarize: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    try:
        summarizer = Summarizer(args.model, args.dtype, args.truncate, not args.no_global_first,
                                generation_settings(args))
        if args.files:
            _run_files(summarizer, [Path(f) for f in args.files], args.batch_size, tqdm)
        if args.jsonl:
            _run_jsonl(summarizer, Path(args.jsonl), Path(args.output), args.text_field, args.batch_size, tqdm)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"longformer summarize: error: {err}", file=sys.stderr)
        return 2
    return 0


def _run_files(summarizer: Summarizer, files: list[Path], batch_size: int, tqdm) -> None:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no such file(s): {missing}")
    docs = [summarizer.encode(f.read_text(encoding="utf-8"), str(f)) for f in files]
    bar = tqdm(total=len(files), desc="summarize", unit="doc", file=sys.stderr)
    for start in range(0, len(files), batch_size):
        chunk = docs[start:start + batch_size]
        for f, summary in zip(files[start:start + batch_size], summarizer.summarize(chunk)):
            print(f"== {f} ==\n{summary}\n", flush=True)
        bar.update(len(chunk))
    bar.close()


def _run_jsonl(summarizer: Summarizer, src: Path, dst: Path, field: str, batch_size: int, tqdm) -> None:
    """Summaries go to dst.partial line by line (flushed), which becomes dst when all are done; a rerun
    resumes after the last complete line of dst.partial."""
    records = []
    for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{src}:{n}: not JSON ({err})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise ValueError(f"{src}:{n}: expected an object with a string field {field!r} (see --text-field)")
        records.append((n, obj))
    partial = dst.with_name(dst.name + ".partial")
    done = 0
    if partial.is_file():
        lines = partial.read_text(encoding="utf-8").split("\n")
        complete = lines[:-1]  # whatever follows the last newline was cut mid-write
        done = len(complete)
        partial.write_text("".join(line + "\n" for line in complete), encoding="utf-8")
    bar = tqdm(total=len(records), initial=done, desc="summarize", unit="doc", file=sys.stderr)
    with partial.open("a", encoding="utf-8") as out:
        for start in range(done, len(records), batch_size):
            chunk = records[start:start + batch_size]
            docs = [summarizer.encode(obj[field], f"{src}:{n}") for n, obj in chunk]
            for (_, obj), summary in zip(chunk, summarizer.summarize(docs)):
                out.write(json.dumps({**obj, "summary": summary}, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(chunk))
    bar.close()
    os.replace(partial, dst)
    print(f"wrote {len(records)} summaries to {dst}", file=sys.stderr)
