"""The public attention entry point: argument checks, mask normalisation and the one dispatch point."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .reference import reference_attention

IMPLS = ("auto", "reference", "blocked", "compiled", "flex", "export")


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    *,
    dilation: int | Sequence[int] = 1,
    causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    global_attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    dropout_seed: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Longformer attention: a (dilated) sliding window plus symmetric global tokens.

    Args:
        q, k, v: (B, H, T, D) tensors of one floating dtype (fp32, bf16, fp16 or fp64) on one device,
            at any strides: a layer passes its (B, T, H * D) projections as
            ``x.view(B, T, H, D).transpose(1, 2)`` (also slices of one fused q/k/v projection),
            and the compiled kernel reads them in place.
        window: one-sided window ``w >= 0``. Query ``i`` of a head with dilation ``r`` sees key ``j``
            when ``(j - i) % r == 0`` and ``|j - i| <= w * r``: up to ``2w + 1`` keys.
        dilation: ``r >= 1`` for every head, or a sequence of H values (one per head).
        causal: only keys ``j <= i``. The restriction applies to the whole pattern, global tokens
            included: a global query sees every earlier key and any query sees an earlier global key,
            so nothing leaks from the future in an autoregressive model.
        attention_mask: (B, T), 1 = token, 0 = padding. Padded keys are never attended. Padded
            queries are computed like any other row (callers usually discard them).
        global_attention_mask: (B, T), 1 = global. A global query attends every (unpadded) key and
            every query attends every global key, with the same q/k/v; a global key inside a
            window is counted once. Each batch element may have its own number of global tokens.
        scale: multiplier of ``q @ k^T``; default ``D ** -0.5``.
        dropout_p: attention-probability dropout (0 <= p < 1), applied after the softmax with kept
            probabilities scaled by 1 / (1 - p). The mask is a hash of (seed, head, query, key)
            (see attention/dropout.py): backward regenerates it, nothing is stored. Callers pass
            ``dropout_p`` only in training. Every implementation applies the same mask.
        dropout_seed: seed of the mask; default: drawn from torch's global generator, so
            ``torch.manual_seed`` makes runs repeatable.
        impl: ``"auto"`` (fastest correct choice), ``"reference"`` (dense O(T^2) spec),
            ``"blocked"`` (memory-linear blocked kernel in PyTorch, any device and dtype) or
            ``"compiled"`` (the fused C++ CPU kernel, built with the system compiler on first use and
            cached; fp32/bf16/fp16), ``"flex"`` (torch's FlexAttention with a block mask built from
            the pattern: compiled on CUDA, eager and O(T^2) in memory on the CPU, where it serves as
            a check) or ``"export"`` (standard ops with static ranks and no T x T tensor, for ONNX /
            torch.export graphs; no attention dropout). ``"auto"`` uses the compiled kernel on the
            CPU when it builds, and falls back to the blocked kernel where it cannot; it never picks
            ``"flex"``, which has not been measured faster than ``"blocked"`` on a GPU (docs/attention.md).

    Returns:
        (B, H, T, D) in q's dtype. A row with nothing to attend is 0, never NaN. Softmax statistics
        are kept in fp32 whatever the input dtype. With ``impl="compiled"`` (what ``"auto"`` runs on
        the CPU), when q's heads lie inside its tokens in memory (``q.stride(1) < q.stride(2)``, as
        for the views above) the output is a (B, H, T, D) view of (B, T, H, D) memory, so that
        ``out.transpose(1, 2).reshape(B, T, H * D)`` for the output projection is a view too, and
        the gradients of q, k and v come back in their inputs' layout; otherwise it is contiguous.
    """
    _check_qkv(q, k, v)
    B, H, T, D = q.shape
    window = _check_window(window)
    dilations = _check_dilation(dilation, H)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    # Under torch.compile, value checks and value-dependent shortcuts would break the graph.
    tracing = torch.compiler.is_compiling()
    key_valid = check_mask("attention_mask", attention_mask, B, T, q.device, check_values=not tracing)
    is_global = check_mask("global_attention_mask", global_attention_mask, B, T, q.device, check_values=not tracing)
    if not tracing:
        if is_global is not None and not bool(is_global.any()):
            is_global = None  # no global token anywhere: the plain band is exact and cheaper
        if key_valid is not None and bool(key_valid.all()):
            key_valid = None
    if scale is None:
        scale = D**-0.5
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    dropout = _check_dropout(dropout_p, dropout_seed, tracing)
    if impl == "auto":
        impl = _choose_impl(q)
    if impl == "reference":
        return reference_attention(q, k, v, window, dilations, causal, key_valid, is_global, scale, dropout)
    if impl == "export":
        if dropout is not None:
            raise ValueError(
                "impl='export' has no attention dropout (it is made for inference graphs): pass dropout_p=0 "
                "(eval mode), or train with impl='auto'"
            )
        from .exportable import exportable_attention

        return exportable_attention(q, k, v, window, dilations, causal, key_valid, is_global, scale)
    if impl == "compiled":
        from .compiled import compiled_attention

        return compiled_attention(q, k, v, window, dilations, causal, key_valid, is_global, scale, dropout)
    if impl == "flex":
        from .flex import flex_attention_impl

        return flex_attention_impl(q, k, v, window, dilations, causal, key_valid, is_global, scale, dropout)
    from .blocked import blocked_attention

    return blocked_attention(q, k, v, window, dilations, causal, key_valid, is_global, scale, dropout)


def _choose_impl(q: torch.Tensor) -> str:
    B, H, T, _ = q.shape
    from . import compiled

    if torch.onnx.is_in_onnx_export():
        # the compiled kernel is a custom op no ONNX runtime knows, and the dense reference is
        # O(T^2): the export kernel is exact, linear and made of standard ops
        return "export"
    if torch.compiler.is_compiling():
        # The compiled kernel is a custom op, opaque to the tracer; the blocked kernel plans with
        # data-dependent shapes and cannot be traced, so elsewhere the dense spec is used.
        return "compiled" if compiled.supports(q) and compiled._available_constant() else "reference"
    if compiled.supports(q) and compiled.available():
        # Measured (docs/attention.md, H=12, D=64, fwd+bwd): the dense reference's few small ops win
        # below ~64 tokens (0.9 vs 1.3 ms at T=8), the compiled kernel from T=64 on (2.3 vs 2.3 ms),
        # by 2.6x at T=128 and 12x at T=512.
        return "reference" if T < 64 else "compiled"
    # Measured (docs/attention.md, fwd+bwd, D=64, H=12, w in {16, 256}): the dense reference wins
    # over the PyTorch blocked kernel up to T=256, where its T x T scores are small and the blocked
    # kernel's fixed per-call work dominates. The element cap keeps the scores <= 64 MB.
    if T <= 256 and B * H * T * T <= 2**24:
        return "reference"
    return "blocked"


def _check_dropout(p: float, seed: int | None, tracing: bool) -> tuple[float, int] | None:
    """(p, seed) when dropout applies, else None."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {p!r}")
    if p == 0.0:
        return None
    if tracing:
        raise NotImplementedError(
            "attention dropout under torch.compile is not supported (its seed would be frozen into the graph); "
            "compile the model in eval mode or with attention dropout 0"
        )
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"dropout_seed must be an int or None, got {type(seed).__name__}")
    return float(p), seed


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, T, D), got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D) (4 dims), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            "q, k and v must have the same shape (B, H, T, D); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device; got q {q.device}, k {k.device}, v {v.device}")
    if q.shape[-1] == 0:
        raise ValueError(f"head dimension D must be >= 1, got shape {tuple(q.shape)}")


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int (one-sided w >= 0), got {type(window).__name__} {window!r}")
    if window < 0:
        raise ValueError(f"window must be >= 0 (one-sided), got {window}")
    return window


def _check_dilation(dilation: int | Sequence[int], H: int) -> tuple[int, ...]:
    if isinstance(dilation, torch.Tensor):
        dilation = dilation.tolist()
    if isinstance(dilation, int) and not isinstance(dilation, bool):
        values = (dilation,) * H
    elif isinstance(dilation, Sequence) and not isinstance(dilation, str):
        values = tuple(dilation)
        if len(values) != H:
            raise ValueError(f"dilation must be an int or a sequence of H={H} ints (one per head), got {len(values)} values")
    else:
        raise TypeError(f"dilation must be an int or a sequence of ints, got {type(dilation).__name__}")
    for r in values:
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"dilation values must be ints, got {dilation!r}")
        if r < 1:
            raise ValueError(f"dilation values must be >= 1, got {dilation!r}")
    return values


def check_mask(
    name: str, mask: torch.Tensor | None, B: int, T: int, device: torch.device, check_values: bool = True
) -> torch.Tensor | None:
    """A bool or 0/1 (B, T) mask -> bool on ``device`` (None stays None); errors name the argument.

    Shared by every entry point that takes masks (the attention core, the encoder, the LED), so that
    they accept the same inputs and say the same things about bad ones. ``check_values=False`` skips
    the value check, which would break a torch.compile graph.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T)=({B}, {T}), got {type(mask).__name__}")
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"{name} must have shape (B, T)=({B}, {T}), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex():
            raise TypeError(f"{name} must be a bool or integer tensor of 0/1, got dtype {mask.dtype}")
        if check_values and not bool(((mask == 0) | (mask == 1)).all()):
            bad = mask[(mask != 0) & (mask != 1)].flatten()[:5].tolist()
            raise ValueError(f"{name} must hold only 0 and 1, found values such as {bad}")
        mask = mask != 0
    return mask.to(device)
