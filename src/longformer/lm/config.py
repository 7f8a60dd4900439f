"""Configs for the character-level autoregressive Longformer: model, training phases, named presets.

`window` is always the one-sided w (DESIGN.md). Windows grow linearly with depth; dilation is given
per layer and per head, so "dilate two heads of the upper layers" is plain data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import LongformerError

VOCAB_SIZES = {"bytes": 256, "text8": 27}


def linear_windows(n_layer: int, bottom: int, top: int) -> tuple[int, ...]:
    """One-sided window per layer, growing linearly from ``bottom`` (layer 0) to ``top`` (last layer).

    The paper found bottom-small / top-large the best arrangement (its Table 4): low layers model
    local structure, upper layers gather long context.
    """
    if n_layer < 1:
        raise ValueError(f"n_layer must be >= 1, got {n_layer}")
    if bottom < 0 or top < 0:
        raise ValueError(f"windows must be >= 0, got bottom={bottom}, top={top}")
    if n_layer == 1:
        return (top,)
    return tuple(round(bottom + (top - bottom) * i / (n_layer - 1)) for i in range(n_layer))


def upper_layer_dilations(
    n_layer: int, n_head: int, dilated_heads: int, layer_dilation: dict[int, int]
) -> tuple[tuple[int, ...], ...]:
    """Per-layer, per-head dilation: in each layer named in ``layer_dilation``, the LAST
    ``dilated_heads`` heads use that dilation and the other heads stay undilated (r = 1), so every
    layer keeps some heads that see the immediate neighbourhood."""
    if not 0 <= dilated_heads <= n_head:
        raise ValueError(f"dilated_heads must be in [0, n_head={n_head}], got {dilated_heads}")
    out = []
    for layer in range(n_layer):
        r = layer_dilation.get(layer, 1)
        if r < 1:
            raise ValueError(f"layer_dilation values must be >= 1, got layer {layer}: {r}")
        out.append((1,) * (n_head - dilated_heads) + (r,) * dilated_heads)
    return tuple(out)


class LMError(LongformerError, ValueError):
    """A language-model argument or file that cannot be used as given (printed as one CLI error line)."""


@dataclass
class LMConfig:
    """Decoder-only causal Longformer over a small symbol vocabulary.

    windows: one-sided window per layer (len n_layer). dilations: per layer a tuple of n_head ints.
    Positions are rotary (relative by construction), so no maximum length is stored anywhere.
    attn_impl is passed to `sliding_window_attention` ("auto" in library use).
    """

    vocab: str = "bytes"
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    windows: tuple[int, ...] = (16, 32, 48, 64)
    dilations: tuple[tuple[int, ...], ...] = ()
    dropout: float = 0.0
    rope_base: float = 10000.0
    grad_checkpointing: bool = False
    attn_impl: str = "auto"
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        if self.vocab not in VOCAB_SIZES:
            raise ValueError(f"vocab must be one of {sorted(VOCAB_SIZES)}, got {self.vocab!r}")
        self.vocab_size = VOCAB_SIZES[self.vocab]
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head size d_model/n_head={self.d_model // self.n_head} must be even for rotary")
        self.windows = tuple(int(w) for w in self.windows)
        if len(self.windows) != self.n_layer:
            raise ValueError(f"windows must have n_layer={self.n_layer} entries, got {len(self.windows)}")
        if not self.dilations:
            self.dilations = tuple((1,) * self.n_head for _ in range(self.n_layer))
        self.dilations = tuple(tuple(int(r) for r in layer) for layer in self.dilations)
        if len(self.dilations) != self.n_layer or any(len(d) != self.n_head for d in self.dilations):
            raise ValueError(f"dilations must be n_layer={self.n_layer} tuples of n_head={self.n_head} ints, got {self.dilations}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("vocab_size")
        d["windows"] = list(d["windows"])
        d["dilations"] = [list(x) for x in d["dilations"]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LMConfig:
        d = dict(d)
        d.pop("vocab_size", None)
        d["windows"] = tuple(d["windows"])
        d["dilations"] = tuple(tuple(x) for x in d["dilations"])
        return cls(**d)

    def receptive_field(self) -> int:
        """How far back (in symbols) the top layer can see: sum over layers of w * max(r)."""
        return sum(w * max(r) for w, r in zip(self.windows, self.dilations))


@dataclass
class Phase:
    """One training stage: sequence length, per-layer windows (bottom..top, linear) and peak lr."""

    steps: int
    seq_len: int
    window_bottom: int
    window_top: int
    lr: float
    batch_size: int
    warmup: int = 0


@dataclass
class TrainConfig:
    phases: list[Phase]
    grad_accum: int = 1
    grad_clip: float = 0.25
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eval_every: int = 100
    eval_tokens: int = 65536
    save_every: int = 100
    log_every: int = 10
    bf16: bool = False
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


@dataclass
class Preset:
    model: LMConfig
    train: TrainConfig


def _tiny() -> Preset:
    # 4 layers x 128: ~0.8M parameters, trains a few hundred steps in minutes on 2 CPU cores.
    # Receptive field 16+32+2*48+2*64 = 272 > the 128-symbol first phase: every layer's window
    # fits well inside the training length, which is what makes 4x-length evaluation safe.
    n_layer, n_head = 4, 4
    model = LMConfig(
        vocab="bytes", n_layer=n_layer, n_head=n_head, d_model=128, d_ff=512,
        windows=linear_windows(n_layer, 16, 64),
        dilations=upper_layer_dilations(n_layer, n_head, 1, {2: 2, 3: 2}),
    )
    phases = [
        Phase(steps=200, seq_len=256, window_bottom=16, window_top=48, lr=2e-3, batch_size=16, warmup=30),
        Phase(steps=100, seq_len=512, window_bottom=16, window_top=64, lr=1e-3, batch_size=8, warmup=10),
    ]
    return Preset(model, TrainConfig(phases=phases, eval_every=100, eval_tokens=32768, save_every=50))


def _small_cpu() -> Preset:
    # A bigger CPU preset, 6 layers x 256 (~4.8M parameters), two phases; not timed on this machine yet.
    n_layer, n_head = 6, 4
    model = LMConfig(
        vocab="bytes", n_layer=n_layer, n_head=n_head, d_model=256, d_ff=1024,
        windows=linear_windows(n_layer, 32, 128),
        dilations=upper_layer_dilations(n_layer, n_head, 1, {4: 2, 5: 2}),
    )
    phases = [
        Phase(steps=600, seq_len=256, window_bottom=16, window_top=64, lr=1e-3, batch_size=16, warmup=60),
        Phase(steps=300, seq_len=512, window_bottom=32, window_top=128, lr=5e-4, batch_size=8, warmup=20),
    ]
    return Preset(model, TrainConfig(phases=phases, eval_every=150, eval_tokens=65536, save_every=100))


def _paper_small() -> Preset:
    # The paper's small enwik8/text8 model (Beltagy et al. 2020, Sec. 4.2 and Appendix Table 12), as
    # best recalled (docs/lm.md lists what is uncertain): 12 layers, d=512, 8 heads, GELU, AdamW,
    # dropout 0.2, weight decay 0.01; five phases with sequence length 2,048 -> 23,040, bottom-layer
    # window 32 -> 512 (doubling), top-layer window 8,192, lr 2.5e-4 halved each phase (constant
    # within a phase, warmup 10% of the phase, at most 10K steps), batch 32/32/16/16/16, steps
    # 430K/50K/50K/35K/5K; dilation on 2 heads: gap 1 in layers 6-7, 2 in 8-9, 3 in 10-11 (r = gap + 1).
    # Positions are rotary here (the paper: relative sinusoidal), hence 38M parameters, not 41M.
    n_layer, n_head = 12, 8
    layer_dilation = {6: 2, 7: 2, 8: 3, 9: 3, 10: 4, 11: 4}
    model = LMConfig(
        vocab="bytes", n_layer=n_layer, n_head=n_head, d_model=512, d_ff=2048, dropout=0.2,
        windows=linear_windows(n_layer, 512, 8192),
        dilations=upper_layer_dilations(n_layer, n_head, 2, layer_dilation),
        grad_checkpointing=True,
    )
    seq = [2048, 4096, 8192, 16384, 23040]
    steps = [430_000, 50_000, 50_000, 35_000, 5_000]
    batch = [32, 32, 16, 16, 16]
    phases = [
        Phase(steps=s, seq_len=t, window_bottom=32 * 2**i, window_top=8192, lr=2.5e-4 / 2**i,
              batch_size=b, warmup=min(10_000, s // 10))
        for i, (s, t, b) in enumerate(zip(steps, seq, batch))
    ]
    return Preset(model, TrainConfig(phases=phases, grad_clip=0.25, eval_every=5000, save_every=2000, bf16=True))


PRESETS = {"tiny": _tiny, "small-cpu": _small_cpu, "paper-small": _paper_small}


def get_preset(name: str, vocab: str | None = None) -> Preset:
    """A fresh copy of the named preset; ``vocab`` ("bytes" or "text8") overrides the model's vocab."""
    if name not in PRESETS:
        raise LMError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    preset = PRESETS[name]()
    if vocab is not None:
        preset.model = replace(preset.model, vocab=vocab)
    return preset


def full_attention(preset: Preset) -> Preset:
    """The same preset with full causal attention: every window wider than any sequence it meets.
    The baseline (b) of docs/lm.md."""
    big = 1 << 30
    model = replace(preset.model, windows=(big,) * preset.model.n_layer,
                    dilations=tuple((1,) * preset.model.n_head for _ in range(preset.model.n_layer)))
    phases = [replace(p, window_bottom=big, window_top=big) for p in preset.train.phases]
    return Preset(model, replace(preset.train, phases=phases))
