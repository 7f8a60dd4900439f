"""Generation for LED: greedy, sampling, beam search and beam sampling, token for token as transformers.

The encoder runs once per call; the decoder runs one token per step against a key/value cache (the
cross-attention keys/values are computed once and shared by a source's beams). Length settings follow
transformers: `max_length`/`min_length` count the decoder start token, `max_new_tokens` does not.
Beam search is transformers' (>= 4.50) vectorised algorithm, including its `early_stopping` heuristics.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .config import UNSUPPORTED_GENERATION
from .decoder import DecoderCache

DEFAULT_MAX_NEW_TOKENS = 20  # transformers' default `max_length=20` new tokens when nothing is set


@dataclass
class GenerationSettings:
    """Resolved settings (see `resolve_settings` for where each default comes from)."""

    max_length: int  # total decoder length, start token included
    min_length: int = 0  # total; EOS is forbidden while the sequence is shorter
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    bos_token_id: int | None = None
    eos_token_id: list[int] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: list[int] | None = None


USER_KEYS = {f.name for f in dataclasses.fields(GenerationSettings)} | {"max_new_tokens", "min_new_tokens"}


def resolve_settings(model, max_decoder_positions: int, **user: Any) -> GenerationSettings:
    """Merge settings: arguments (not None) > model.generation_defaults (generation_config.json, else the
    generation keys of config.json) > the model config's token ids > transformers' global defaults."""
    user.pop("use_cache", None)  # accepted for transformers-style calls: the decoder always uses its cache
    unknown = set(user) - USER_KEYS
    if unknown:
        raise TypeError(f"unknown generation settings {sorted(unknown)}; known: {sorted(USER_KEYS)}")
    defaults = getattr(model, "generation_defaults", {}) or {}
    refused = {k: v for k, v in defaults.items()
               if k in UNSUPPORTED_GENERATION and v is not None and v != UNSUPPORTED_GENERATION[k]}
    if refused:
        raise ValueError(
            f"the checkpoint's generation defaults set {refused}, which this generate() does not implement "
            "(transformers would apply them, so the tokens would differ); drop them from "
            "model.generation_defaults to generate without them"
        )
    c = model.config
    merged: dict[str, Any] = {
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
    }
    # Token ids a generation_config.json lists (even as null) override the model config's, as in transformers.
    merged.update({k: v for k, v in defaults.items() if k in USER_KEYS and (v is not None or k in merged)})
    explicit = {k: v for k, v in user.items() if v is not None}
    merged.update(explicit)
    if merged.get("decoder_start_token_id") is None:
        merged["decoder_start_token_id"] = merged.get("bos_token_id")
    if merged["decoder_start_token_id"] is None:
        raise ValueError("decoder_start_token_id (or bos_token_id) must be set for generation")
    eos = merged.get("eos_token_id")
    merged["eos_token_id"] = None if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if merged.get("pad_token_id") is None and merged["eos_token_id"]:
        merged["pad_token_id"] = merged["eos_token_id"][0]
    feos = merged.get("forced_eos_token_id")
    merged["forced_eos_token_id"] = None if feos is None else ([feos] if isinstance(feos, int) else list(feos))

    prompt = 1  # the decoder start token
    max_new = merged.pop("max_new_tokens", None)
    if max_new is not None:
        _check_int("max_new_tokens", max_new, 1)
        merged["max_length"] = max_new + prompt
    elif merged.get("max_length") is None:
        merged["max_length"] = DEFAULT_MAX_NEW_TOKENS + prompt
    min_new = merged.pop("min_new_tokens", None)
    if min_new is not None:
        _check_int("min_new_tokens", min_new, 0)
        merged["min_length"] = min_new + prompt
    s = GenerationSettings(**{k: v for k, v in merged.items() if k in {f.name for f in dataclasses.fields(GenerationSettings)}})
    _validate(s, max_decoder_positions, model.config.vocab_size)
    return s


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _validate(s: GenerationSettings, max_positions: int, vocab_size: int) -> None:
    _check_int("max_length", s.max_length, 2)
    _check_int("min_length", s.min_length, 0)
    _check_int("num_beams", s.num_beams, 1)
    _check_int("no_repeat_ngram_size", s.no_repeat_ngram_size, 0)
    _check_int("num_return_sequences", s.num_return_sequences, 1)
    # The decoder reads positions 0 .. max_length-2 (the last token is produced, never fed back).
    if s.max_length - 1 > max_positions:
        raise ValueError(
            f"generation would run past the decoder's position table: max_length={s.max_length} "
            f"(max_new_tokens={s.max_length - 1}) needs positions up to {s.max_length - 2}, but "
            f"max_decoder_position_embeddings={max_positions}; ask for at most {max_positions} new tokens"
        )
    if not (isinstance(s.temperature, (int, float)) and s.temperature > 0):
        raise ValueError(f"temperature must be a float > 0, got {s.temperature!r}")
    if not (isinstance(s.top_p, (int, float)) and 0 <= s.top_p <= 1):
        raise ValueError(f"top_p must be in [0, 1], got {s.top_p!r}")
    if s.top_k is not None:
        _check_int("top_k", s.top_k, 0)
    if not (isinstance(s.repetition_penalty, (int, float)) and s.repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be a float > 0, got {s.repetition_penalty!r}")
    if s.early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {s.early_stopping!r}")
    if s.num_beams == 1 and not s.do_sample and s.num_return_sequences > 1:
        raise ValueError("greedy search returns one sequence per input: num_return_sequences must be 1 (or sample, or use beams)")
    if s.num_beams > 1 and s.num_return_sequences > s.num_beams:
        raise ValueError(f"num_return_sequences ({s.num_return_sequences}) must be <= num_beams ({s.num_beams})")
    for name in ("bos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id"):
        v = getattr(s, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size):
            raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {v!r}")


# ---------------------------------------------------------------- logits processors (transformers' order)
def process_scores(s: GenerationSettings, ids: torch.Tensor, scores: torch.Tensor, min_keep: int) -> torch.Tensor:
    """Apply the enabled processors to scores (N, V) given the decoder ids so far (N, cur_len)."""
    cur_len = ids.shape[1]
    V = scores.shape[-1]
    if s.repetition_penalty != 1.0:
        seen = torch.gather(scores, 1, ids)
        seen = torch.where(seen < 0, seen * s.repetition_penalty, seen / s.repetition_penalty)
        scores = scores.scatter(1, ids, seen)
    n = s.no_repeat_ngram_size
    if n > 0 and cur_len >= n:
        # A window whose first n-1 tokens equal the current suffix bans its last token.
        prefix = ids[:, cur_len + 1 - n:]
        windows = ids.unfold(1, n, 1)  # (N, cur_len-n+1, n)
        matches = (windows[..., :-1] == prefix[:, None]).all(-1)
        banned = scores.new_zeros((scores.shape[0], V + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=V), V), True)
        scores = scores.masked_fill(banned[:, :V], -math.inf)
    if s.eos_token_id and s.min_length > 0 and cur_len < s.min_length:
        scores = scores.clone()
        scores[:, s.eos_token_id] = -math.inf
    if s.forced_bos_token_id is not None and cur_len == 1:
        scores = torch.full_like(scores, -math.inf)
        scores[:, s.forced_bos_token_id] = 0
    if s.forced_eos_token_id is not None and cur_len == s.max_length - 1:
        scores = torch.full_like(scores, -math.inf)
        scores[:, s.forced_eos_token_id] = 0
    if s.do_sample:
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k:
            k = min(max(s.top_k, min_keep), V)
            scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -math.inf)
        if s.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            remove = cumulative <= (1 - s.top_p)
            remove[..., -min_keep:] = False
            scores = scores.masked_fill(remove.scatter(1, order, remove), -math.inf)
    return scores


# ---------------------------------------------------------------- entry point
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             global_attention_mask: torch.Tensor | None = None, **settings: Any) -> torch.Tensor:
    """Generate decoder token ids for each source document.

    Args:
        model: LEDForConditionalGeneration.
        input_ids: (B, T) source ids; attention_mask (B, T) 1 = token; global_attention_mask (B, T)
            1 = global (None: the first token of each row, see LEDModel.encode).
        settings: max_new_tokens (default 20, or the checkpoint's max_length), max_length, min_length,
            min_new_tokens, num_beams (1), do_sample (False), temperature (1.0), top_k (50, sampling
            only), top_p (1.0), repetition_penalty (1.0), no_repeat_ngram_size (0), length_penalty (1.0),
            early_stopping (False | True | "never"), num_return_sequences (1), forced_bos_token_id,
            forced_eos_token_id, bos/eos/pad/decoder_start_token_id. None means "the checkpoint's default"
            (generation_config.json, else config.json), as in transformers.
    Returns:
        (B * num_return_sequences, L) token ids starting with the decoder start token; rows that end
        early are filled with pad_token_id (as transformers).
    """
    s = resolve_settings(model, model.led.decoder.max_positions, **settings)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            enc = model.led.encode(input_ids, attention_mask, global_attention_mask)
            if s.num_beams > 1:
                return _beam_search(model, enc, s)
            return _greedy_or_sample(model, enc, s)
    finally:
        model.train(was_training)


def _step_logits(model, ids: torch.Tensor, enc, cache: DecoderCache) -> torch.Tensor:
    """Next-token logits (N, V) in fp32 for the last token of ids, through the cache."""
    first = not cache.cross_kv
    hidden = model.led.decoder(ids[:, -1:] if not first else ids, enc.last_hidden_state if first else None,
                               enc.attention_mask, cache=cache)
    return model.logits(hidden[:, -1]).float()


def _greedy_or_sample(model, enc, s: GenerationSettings) -> torch.Tensor:
    B = enc.last_hidden_state.shape[0]
    r = s.num_return_sequences
    device = enc.last_hidden_state.device
    ids = torch.full((B * r, 1), s.decoder_start_token_id, dtype=torch.long, device=device)
    cache = DecoderCache(rows_per_source=r)
    eos = torch.tensor(s.eos_token_id, device=device) if s.eos_token_id else None
    unfinished = torch.ones(B * r, dtype=torch.bool, device=device)
    while True:
        scores = process_scores(s, ids, _step_logits(model, ids, enc, cache), min_keep=1)
        if s.do_sample:
            next_ids = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_ids = torch.argmax(scores, dim=-1)
        if eos is not None:
            next_ids = torch.where(unfinished, next_ids, s.pad_token_id)
        ids = torch.cat([ids, next_ids[:, None]], dim=-1)
        if eos is not None:
            unfinished = unfinished & ~torch.isin(next_ids, eos)
        if ids.shape[1] >= s.max_length or not bool(unfinished.any()):
            return ids


def _beam_search(model, enc, s: GenerationSettings) -> torch.Tensor:
    """transformers' vectorised beam search (GenerationMixin._beam_search), for a 1-token decoder prompt."""
    B = enc.last_hidden_state.shape[0]
    nb, L, lp = s.num_beams, s.max_length, s.length_penalty
    device = enc.last_hidden_state.device
    prompt_len = cur_len = 1
    eos = torch.tensor(s.eos_token_id, device=device) if s.eos_token_id else None
    n_eos = 0 if eos is None else eos.shape[0]
    keep = max(2, 1 + n_eos) * nb  # enough candidates that nb stay open even if the best ones all end
    top_nb_mask = torch.arange(keep, device=device) < nb
    fill = (s.pad_token_id if s.pad_token_id else s.eos_token_id[0]) if eos is not None else -1

    running = torch.full((B, nb, L), fill, dtype=torch.long, device=device)
    running[:, :, 0] = s.decoder_start_token_id
    finished_seqs = running.clone()
    running_scores = torch.zeros(B, nb, device=device)
    running_scores[:, 1:] = -1e9  # only the first beam's candidates at step one (no identical beams)
    finished_scores = torch.full((B, nb), -1e9, device=device)
    is_finished = torch.zeros(B, nb, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=device)
    running_parents = torch.full((B, nb, L - cur_len), -1, dtype=torch.int32, device=device)
    finished_parents = running_parents.clone()
    cache = DecoderCache(rows_per_source=nb)
    batch_offset = torch.arange(B, device=device)[:, None] * nb

    while True:
        flat = running[:, :, :cur_len].reshape(B * nb, cur_len)
        log_probs = F.log_softmax(_step_logits(model, flat, enc, cache), dim=-1)
        log_probs = process_scores(s, flat, log_probs, min_keep=n_eos + 1 if eos is not None else 2)
        V = log_probs.shape[-1]
        log_probs = (log_probs.view(B, nb, V) + running_scores[:, :, None]).reshape(B, nb * V)

        # c. top-K continuations over all beams (drawn without replacement when sampling)
        topk_lp, topk_idx = _top_k_continuations(log_probs, keep, s.do_sample)
        parent = topk_idx // V
        topk_parents = _gather(running_parents, parent)
        topk_seqs = _gather(running, parent)
        topk_seqs[:, :, cur_len] = topk_idx % V
        topk_parents[:, :, cur_len - prompt_len] = (parent + batch_offset).int()

        # d. which candidates hit a stopping criterion (max length, or EOS as their last token)
        hits = torch.full((B, keep), cur_len + 1 >= L, dtype=torch.bool, device=device)
        if eos is not None:
            hits = hits | torch.isin(topk_seqs[:, :, cur_len], eos)

        # e. the best nb unfinished candidates continue
        open_lp = topk_lp + hits.float() * -1.0e9
        nxt = torch.topk(open_lp, k=nb)[1]
        running = _gather(topk_seqs, nxt)
        running_scores = _gather(open_lp, nxt)
        running_parents = _gather(topk_parents, nxt)

        # f. finished candidates among the top nb enter the finished pool if they beat it
        just_finished = hits & top_nb_mask[None, :]
        scored = topk_lp / ((cur_len + 1 - prompt_len) ** lp)
        full = torch.all(is_finished, dim=-1, keepdim=True) & (s.early_stopping is True)
        scored = scored + full.float() * -1.0e9
        scored = scored + (~can_improve).float() * -1.0e9
        scored = scored + (~just_finished) * -1.0e9
        merged_scores = torch.cat((finished_scores, scored), dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        finished_seqs = _gather(torch.cat((finished_seqs, topk_seqs), dim=1), best)
        finished_scores = _gather(merged_scores, best)
        finished_parents = _gather(torch.cat((finished_parents, topk_parents), dim=1), best)
        is_finished = _gather(torch.cat((is_finished, just_finished), dim=1), best)

        # g. reorder the cache to the surviving beams' parents, then decide whether to go on
        cache.reorder(running_parents[..., cur_len - prompt_len].reshape(-1).long())
        cur_len += 1
        if s.early_stopping == "never" and lp > 0.0:
            best_len = L - prompt_len
        else:
            best_len = cur_len - prompt_len
        best_possible = running_scores[:, :1] / (best_len ** lp)
        worst_finished = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], -1.0e9)
        can_improve = can_improve & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
        go_on = (
            bool(can_improve.any())
            and not (bool(is_finished.all()) and s.early_stopping is True)
            and not bool(hits.all())
        )
        if not go_on:
            break

    r = s.num_return_sequences
    seqs = finished_seqs[:, :r].reshape(B * r, L)
    parents = finished_parents[:, :r].reshape(B * r, -1)
    generated = int((parents + 1).bool().sum(dim=1).max())
    return seqs[:, : prompt_len + generated]


def _top_k_continuations(log_probs: torch.Tensor, keep: int, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The `keep` candidates (B, keep) out of the accumulated log-probs (B, nb*V), best first: their scores
    and flat indices (beam * V + token)."""
    if not sample:
        topk_lp, topk_idx = torch.topk(log_probs, k=keep)
        return topk_lp, topk_idx
    idx = torch.multinomial(F.softmax(log_probs, dim=-1), num_samples=keep)
    lp = torch.gather(log_probs, 1, idx)
    # The draws come out in draw order; transformers >= 5.24 sorts them by score (descending) before use.
    # The order matters: only the first nb candidates may enter the finished pool (and ties in the later
    # topks follow it). The vectorised beam search up to 5.23 used the draw order as is,
    # so beam sampling there gives other tokens for the same seed; we match the current release. Same call
    # as transformers (torch.sort, not stable) so that ties break the same way.
    lp, order = lp.sort(dim=-1, descending=True)
    return lp, idx.gather(-1, order)


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick along dim 1 (beams): t (B, K, ...), idx (B, k) -> (B, k, ...)."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)
