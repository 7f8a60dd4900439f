"""MLM bits per token (the paper's "MLM BPC", Table 5) of a model on a text at a given length.

Definition (the one allenai's conversion notebook computes as ``eval_loss / log(2)``): the mean,
over the masked tokens, of the cross-entropy of the original token in bits,

    bpc = sum_i -log2 p(x_i | corrupted input) / M      over the M masked tokens i,

reported as ``bpc`` (bits per masked *token*, despite the name). ``bits_per_char`` divides the
same total by the number of characters of the masked tokens' text instead (their tokenizer
offsets; separators count 0), which compares across tokenizers.

The mask is fixed: BERT's 15% / 80-10-10 masking (see masking.py) drawn once over the whole token
stream (documents joined by separators) from ``seed``, BEFORE the stream is cut into sequences of
``max_length``. So evaluations at different lengths (4096-token sequences, or 512-token chunks of
the original model) score exactly the same tokens with exactly the same corruption; only the
context each token is predicted from differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..training import DistContext, all_gather_objects
from .data import TokenStream, Vocab, pack
from .masking import IGNORE, mask_tokens
from .mlm import MaskedTokenLoss


@dataclass
class EvalSet:
    """Packed, masked sequences: inputs, labels (-100 = not scored), chars (of each labelled token's
    text), attention mask (True = token); all (S, max_length)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    chars: torch.Tensor
    valid: torch.Tensor
    max_length: int
    seed: int

    def __len__(self) -> int:
        return self.inputs.shape[0]


def eval_set(stream: TokenStream, vocab: Vocab, max_length: int, seed: int, probability: float = 0.15) -> EvalSet:
    """Mask the stream once from ``seed``, then pack inputs, labels and char counts alike."""
    inputs, labels = mask_tokens(stream.ids, vocab, torch.Generator().manual_seed(seed), probability=probability)
    packed, valid = pack(inputs, max_length, vocab)
    packed_labels, _ = pack(labels, max_length, vocab, fill=IGNORE)
    chars, _ = pack(torch.where(labels != IGNORE, stream.chars, 0), max_length, vocab, fill=0)
    return EvalSet(packed, packed_labels, chars, valid, max_length, seed)


@torch.no_grad()
def mlm_bpc(loss_model: MaskedTokenLoss, data: EvalSet, *, batch_size: int = 1, bf16: bool = False,
            ctx: DistContext | None = None, progress: bool = False) -> dict[str, Any]:
    """Score ``data`` (split over the processes of ``ctx``; every rank gets the same result).

    Returns {"bpc" (bits per masked token), "bits_per_char", "nll_bits", "masked_tokens",
    "masked_chars", "sequences", "max_length", "seed"}.
    """
    from tqdm.auto import tqdm

    ctx = ctx or DistContext()
    was_training = loss_model.training
    loss_model.eval()
    device = ctx.device
    mine = list(range(ctx.rank, len(data), ctx.world_size))
    nats, tokens, chars = 0.0, 0, 0
    bar = tqdm(total=len(mine), desc=f"eval-mlm T={data.max_length}", unit="seq", disable=not progress, leave=False)
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        labels = data.labels[rows]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, count = loss_model(data.inputs[rows].to(device), data.valid[rows].to(device), labels.to(device))
        nats += float(loss.double())
        tokens += int(count)
        chars += int(data.chars[rows].sum())
        bar.update(len(rows))
    bar.close()
    loss_model.train(was_training)
    parts = all_gather_objects(ctx, (nats, tokens, chars))
    nats, tokens, chars = (sum(p[i] for p in parts) for i in range(3))
    if tokens == 0:
        raise ValueError("no token was masked: the evaluation text is too short (it needs a few dozen tokens)")
    bits = nats / math.log(2)
    return {"bpc": bits / tokens, "bits_per_char": bits / max(chars, 1), "nll_bits": bits, "masked_tokens": tokens,
            "masked_chars": chars, "sequences": len(data), "max_length": data.max_length, "seed": data.seed}


def evaluate_file(model: str, files: list[str], max_length: int, *, seed: int = 0, probability: float = 0.15,
                  max_tokens: int | None = None, batch_size: int = 1, bf16: bool = False, device: str | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """`eval-mlm`: MLM bpc of the model at ``model`` (dir or hub id) on ``files`` at ``max_length``.

    ``max_tokens`` keeps the first that-many tokens of the stream (before masking: the mask is
    drawn over what is kept). Returns `mlm_bpc`'s dict plus "model", "files", "tokens"."""
    from .._files import resolve_checkpoint
    from ..encoder import LongformerForMaskedLM, load_tokenizer
    from .data import PretrainDataError, read_documents, tokenize, vocab_of
    from .mlm import checkpoint_keys

    directory = resolve_checkpoint(model)
    if not any(k.startswith("lm_head.") for k in checkpoint_keys(directory)):
        raise PretrainDataError(f"{model} has no MLM head (no lm_head.* weights), so its MLM bpc would measure a random "
                                "head; give it one first: longformer pretrain-mlm --freeze-encoder (see docs/pretrain.md)")
    core = LongformerForMaskedLM.from_pretrained(directory)
    if max_length > core.config.max_length:
        raise PretrainDataError(f"--max-length {max_length} exceeds what {model} takes ({core.config.max_length} tokens)")
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    core.to(dev)
    tokenizer = load_tokenizer(directory)
    vocab = vocab_of(tokenizer, core.config.vocab_size, core.config.pad_token_id)
    stream = tokenize(tokenizer, read_documents(files), vocab)
    if max_tokens is not None:
        if max_tokens < 1:
            raise PretrainDataError(f"--max-tokens must be >= 1, got {max_tokens}")
        stream = TokenStream(stream.ids[:max_tokens], stream.chars[:max_tokens], stream.documents)
    data = eval_set(stream, vocab, max_length, seed, probability)
    result = mlm_bpc(MaskedTokenLoss(core), data, batch_size=batch_size, bf16=bf16, ctx=DistContext(device=dev),
                     progress=progress)
    return {"model": str(model), "files": [str(f) for f in files], "tokens": int(stream.ids.numel()), **result}
