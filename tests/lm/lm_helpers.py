"""Helpers for the LM tests: a micro model config, a micro preset and synthetic English-like text."""
from __future__ import annotations

import random

from longformer.lm.config import LMConfig, Phase, Preset, TrainConfig, linear_windows, upper_layer_dilations

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or "
         "had first one their its new after but who not they have her she two been other when there all "
         "during into school time may years more most only over city some world would where later up "
         "such used many can state about national out known university united then made").split()


def micro_config(**kw) -> LMConfig:
    """2 layers x 32, windows 3 and 5, one dilated head in the top layer: receptive field 3 + 10 = 13."""
    base = dict(vocab="bytes", n_layer=2, n_head=2, d_model=32, d_ff=64, windows=(3, 5),
                dilations=upper_layer_dilations(2, 2, 1, {1: 2}), attn_impl="reference")
    base.update(kw)
    return LMConfig(**base)


def micro_preset(steps: int = 8, seq_len: int = 32, **train_kw) -> Preset:
    half = steps // 2
    phases = [Phase(steps=half, seq_len=seq_len // 2, window_bottom=2, window_top=4, lr=3e-3, batch_size=4, warmup=2),
              Phase(steps=steps - half, seq_len=seq_len, window_bottom=3, window_top=5, lr=1.5e-3, batch_size=4)]
    cfg = dict(eval_every=max(1, steps // 2), eval_tokens=512, save_every=1000, log_every=2)
    cfg.update(train_kw)
    return Preset(micro_config(windows=linear_windows(2, 3, 5)), TrainConfig(phases=phases, **cfg))


def synthetic_text(n_chars: int, seed: int = 0) -> str:
    """Random sentences over a 90-word vocabulary: far below its unigram entropy when modelled well."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_chars]
