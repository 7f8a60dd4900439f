"""Longformer self-attention of one encoder layer: local rows through `query/key/value`, global rows
recomputed with `query_global/key_global/value_global` (paper §3.1, the released checkpoints).

Both passes go through `longformer.sliding_window_attention`; this module only projects, selects and
masks. It matches transformers' `LongformerSelfAttention` (same parameters, same math): queries are
scaled by 1/sqrt(D); a local row attends its window plus every global key (a global key inside the
window counted once); padded keys are never attended; padded query rows output 0; global rows attend
every unpadded key with the global projections and overwrite the local result.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..attention import sliding_window_attention

_warned_dropout = False


class LongformerSelfAttention(nn.Module):
    """Args:
    hidden_size: C. num_heads: H (C % H == 0). window: one-sided w. dilation: int or one per head.
    dropout: attention-probability dropout (see `forward`). impl: passed to sliding_window_attention.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        window: int,
        dilation: int | Sequence[int] = 1,
        dropout: float = 0.0,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.window = window
        self.dilation = dilation if isinstance(dilation, int) else tuple(dilation)
        self.dropout = dropout
        self.impl = impl
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.query_global = nn.Linear(hidden_size, hidden_size)
        self.key_global = nn.Linear(hidden_size, hidden_size)
        self.value_global = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden: (B, T, C). attention_mask: bool (B, T), True = token (None = no padding).
        global_mask: bool (B, T), True = global (None = no global token). A padded token is never global.

        Returns the attention context (B, T, C), before the output projection; padded rows are 0.

        Attention-probability dropout: `sliding_window_attention` has no dropout, so in training mode
        with dropout > 0 it is not applied (a warning says so once); hidden dropout elsewhere still is.
        """
        global _warned_dropout
        B, T, C = hidden.shape
        if attention_mask is not None and global_mask is not None:
            global_mask = global_mask & attention_mask  # padding wins, as in transformers
        if self.training and self.dropout > 0 and not _warned_dropout:
            _warned_dropout = True
            warnings.warn(
                f"attention-probability dropout (p={self.dropout}) is not applied: the attention core has no "
                "dropout. Hidden-state dropout still applies.",
                stacklevel=2,
            )
        tracing = torch.compiler.is_compiling()
        impl = self.impl
        if tracing and impl == "auto":
            # The blocked kernel plans with data-dependent shapes (nonzero of the masks), which
            # torch.compile(fullgraph=True) cannot trace; the dense reference is the same math
            # (the spec every kernel is tested against) and traces at fixed shapes.
            impl = "reference"
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        context = sliding_window_attention(
            q, k, v, self.window, dilation=self.dilation,
            attention_mask=attention_mask, global_attention_mask=global_mask, impl=impl,
        )  # (B, H, T, D)

        if global_mask is not None and (tracing or bool(global_mask.any())):
            # Global rows: full attention over every unpadded key with the global projections. With the
            # global mask, a global query sees every key whatever the window, so window=0 keeps the
            # (discarded) local rows of this call cheap.
            if tracing:
                qg = self._heads(self.query_global(hidden))
            else:
                # Only global rows' queries are used: project those G rows, not all T (as transformers).
                where = global_mask.nonzero(as_tuple=True)
                qg = hidden.new_zeros(B, T, C).index_put(where, self.query_global(hidden[where]))
                qg = self._heads(qg)
            kg = self._heads(self.key_global(hidden))
            vg = self._heads(self.value_global(hidden))
            global_context = sliding_window_attention(
                qg, kg, vg, 0, attention_mask=attention_mask, global_attention_mask=global_mask, impl=impl
            )
            context = torch.where(global_mask[:, None, :, None], global_context, context)
        else:
            # No global token: the global projections are unused. Touch them with a zero so every
            # parameter gets a (zero) gradient and DDP does not fail on "unused parameters".
            context = context + 0.0 * sum(
                p.sum() for m in (self.query_global, self.key_global, self.value_global) for p in m.parameters()
            ).to(context.dtype)

        if attention_mask is not None:
            # transformers zeroes padded query rows (the core leaves them to the caller).
            context = context.masked_fill(~attention_mask[:, None, :, None], 0.0)
        return context.transpose(1, 2).reshape(B, T, C)
