"""Bits per character over a split with overlapping windows, and the `eval-lm` command's core.

Windows of N symbols overlap by S: a window scores only the symbols that come after the first S
symbols of its input, so every scored symbol sees at least S symbols of context (the first window
of the split scores everything: there is nothing earlier to see). The model is only ever run at
length N, which may be far beyond the length it was trained at.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import LMError
from .data import SymbolStream
from .model import LongformerLM


def plan_windows(n: int, seq_len: int, context: int) -> Iterator[tuple[int, int]]:
    """Yield (start, first_scored) for windows over n symbols.

    A window's inputs are symbols [start, start + seq_len) and its targets [start + 1, start + seq_len]
    (clipped to n - 1); targets from first_scored on are scored. Every target 1..n-1 is scored exactly
    once, and target j of a window starting at `start` has j - start >= context symbols before it
    (except in the first window).
    """
    if seq_len < 1:
        raise LMError(f"seq_len must be >= 1, got {seq_len}")
    if not 0 <= context < seq_len:
        raise LMError(f"context (--stride) must be in [0, seq_len={seq_len}), got {context}")
    next_target = 1
    while next_target <= n - 1:
        # target j is predicted from inputs start..j-1: at least one input, and `context` of them
        start = max(0, next_target - max(context, 1))
        yield start, next_target
        next_target = start + seq_len + 1


@torch.no_grad()
def evaluate_bpc(model: LongformerLM, stream: SymbolStream, seq_len: int, context: int, *,
                 max_symbols: int | None = None, batch_size: int = 8, progress: bool = False,
                 bf16: bool = False) -> dict:
    """Bits per symbol of ``stream`` (its first ``max_symbols`` symbols if given).

    Returns {"bpc", "nll_bits", "scored", "windows", "seq_len", "context"}.
    """
    n = len(stream) if max_symbols is None else min(len(stream), max_symbols)
    if n < 2:
        raise LMError(f"need at least 2 symbols to score, the {stream.split} split has {n}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows = list(plan_windows(n, seq_len, context))
    total_nats, scored = 0.0, 0
    # Windows of equal length are batched; only the last window of a split can be shorter.
    bar = tqdm(total=n - 1, desc=f"eval {stream.split} N={seq_len}", unit="sym", disable=not progress)
    i = 0
    while i < len(windows):
        length = min(seq_len, n - 1 - windows[i][0])
        group = [windows[i]]
        while len(group) < batch_size and i + len(group) < len(windows):
            s, _ = windows[i + len(group)]
            if min(seq_len, n - 1 - s) != length:
                break
            group.append(windows[i + len(group)])
        rows = torch.stack([torch.from_numpy(stream.get(s, s + length + 1)) for s, _ in group]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(rows[:, :-1])  # (b, length, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), rows[:, 1:], reduction="none")  # (b, length)
        for row, (s, first) in enumerate(group):
            skip = first - (s + 1)  # targets before first_scored were scored by an earlier window
            total_nats += float(nll[row, skip:].double().sum())
            scored += length - skip
            bar.update(length - skip)
        i += len(group)
    bar.close()
    model.train(was_training)
    if scored != n - 1:
        raise RuntimeError(f"internal error: scored {scored} symbols, expected {n - 1}")
    bits = total_nats / math.log(2)
    return {"bpc": bits / scored, "nll_bits": bits, "scored": scored, "windows": len(windows),
            "seq_len": seq_len, "context": context}
