"""Longformer self-attention of one encoder layer: local rows through `query/key/value`, global rows
recomputed with `query_global/key_global/value_global` (paper §3.1, the released checkpoints).

It matches transformers' `LongformerSelfAttention` (same parameters, same math): queries are scaled by
1/sqrt(D); a local row attends its window plus every global key (a global key inside the window counted
once); padded keys are never attended; padded query rows output 0; global rows attend every unpadded
key with the global projections and overwrite the local result.

The band goes through `longformer.sliding_window_attention`. The global rows are transformers' dense
(G x T) product in eager mode (O(G * T); with few global tokens the key/value projections are folded
into the G queries instead of applied to all T tokens, `folded_global_rows`). With impl="export" they
are the export kernel's own (G x T) part for the G global rows (G computed inside the graph, the fold
chosen there too); under torch.compile / torch.export with other kernels, where shapes cannot depend
on how many tokens are global, a second `sliding_window_attention` call with the global mask.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..attention import sliding_window_attention
from ..attention.exportable import GlobalSlots, masked_softmax
from ..linear import linear


def folding_pays(G: int, num_heads: int, hidden_size: int) -> bool:
    """Whether `folded_global_rows` costs less than projecting every token with key_global/value_global.

    Projecting costs 4 T C^2 (two T x C x C GEMMs) + 4 G T C flops (the G x T attention); folding costs
    4 G H T C. Folding wins while G (H - 1) < C: G < 70 at base size (C = 768, H = 12). Measured there
    (T = 4096, one layer's global rows, 2-core AMD EPYC): G = 1: 54 ms projected, 3.9 ms folded; G = 8:
    75 / 10; G = 32: 94 / 38; G = 64: 84 / 81; G = 128: 92 / 143."""
    return G * (num_heads - 1) < hidden_size


def folded_global_rows(q_rows: torch.Tensor, hidden: torch.Tensor, key: nn.Linear, value: nn.Linear,
                       key_valid: torch.Tensor | None, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """The global rows' attention with the key and value projections folded into the G queries.

    The same math as attending over ``k = key(hidden)`` and ``v = value(hidden)``, without computing
    them: head h's score of token t is ``(scale q_h) . (W_h x_t + b_h) = (W_h^T scale q_h) . x_t +
    (scale q_h) . b_h``, and its output is ``sum_t p_t (V_h x_t + c_h) =
    V_h (sum_t p_t x_t) + c_h sum_t p_t`` (the sum is 1 without dropout, less with it).

    q_rows: (B, H, G, D) projected global queries; hidden: (B, T, C) the layer's input; key_valid:
    bool (B, T) keys to attend (None = all). Returns (B, H, G, D); a row with no valid key gets 0.
    """
    B, H, G, D = q_rows.shape
    _, T, C = hidden.shape
    stat = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    q_rows = q_rows * scale
    folded_q = torch.matmul(q_rows, key.weight.view(H, D, C))  # (B, H, G, C)
    s = torch.matmul(folded_q.reshape(B, H * G, C), hidden.transpose(1, 2)).view(B, H, G, T).to(stat)
    if key.bias is not None:
        # constant along the row, so the softmax cancels it; kept so that the scores are the
        # unfolded ones (and the bias gets its (zero) gradient, which DDP expects of every parameter)
        s = s + torch.matmul(q_rows, key.bias.view(H, D, 1)).to(stat)
    if key_valid is None:
        p, has_any = torch.softmax(s, dim=-1), None
    else:
        p, has_any = masked_softmax(s, key_valid[:, None, None, :])
        p = p * has_any.to(p.dtype)
    if dropout_p > 0:
        p = nn.functional.dropout(p, dropout_p, training=True)
    mixed = torch.matmul(p.to(hidden.dtype).reshape(B, H * G, T), hidden).view(B, H, G, C)  # sum_t p_t x_t
    out = torch.matmul(mixed, value.weight.view(H, D, C).transpose(1, 2))  # (B, H, G, D)
    if value.bias is not None:
        out = out + value.bias.view(H, 1, D) * p.sum(dim=-1, keepdim=True).to(out.dtype)
    return out


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

        Attention-probability dropout (training mode): local rows through the attention core's hash
        mask, global rows with torch's dropout on their (G x T) probabilities, as transformers does.
        """
        B, T, C = hidden.shape
        if attention_mask is not None and global_mask is not None:
            global_mask = global_mask & attention_mask  # padding wins, as in transformers
        impl = self.impl  # under torch.compile, "auto" picks a kernel that traces (see attention/api.py)
        # the export kernel takes the fixed-shape path in eager mode too, so that eager runs compute
        # exactly what an exported graph does
        tracing = torch.compiler.is_compiling() or impl == "export"
        q, k, v = (self._heads(linear(hidden, p)) for p in (self.query, self.key, self.value))
        context = sliding_window_attention(
            q, k, v, self.window, dilation=self.dilation,
            attention_mask=attention_mask, global_attention_mask=global_mask, impl=impl,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, D)

        if global_mask is not None and impl == "export":
            context = self._global_rows_export(context, hidden, attention_mask, global_mask)
        elif global_mask is not None and tracing:
            context = torch.where(global_mask[:, None, :, None], self._global_rows_core(hidden, attention_mask,
                                                                                        global_mask, impl), context)
        elif global_mask is not None and bool(global_mask.any()):
            context = self._overwrite_global_rows(context, hidden, attention_mask, global_mask)
        elif torch.is_grad_enabled():
            # No global token: the global projections are unused. Touch them with a zero so every
            # parameter gets a (zero) gradient and DDP does not fail on "unused parameters".
            context = context + 0.0 * sum(
                p.sum() for m in (self.query_global, self.key_global, self.value_global) for p in m.parameters()
            ).to(context.dtype)

        if attention_mask is not None:
            # transformers zeroes padded query rows (the core leaves them to the caller).
            pad = ~attention_mask[:, None, :, None]
            context = context.masked_fill_(pad, 0.0) if not torch.is_grad_enabled() else context.masked_fill(pad, 0.0)
        return context.transpose(1, 2).reshape(B, T, C)

    def _global_rows_core(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                          global_mask: torch.Tensor, impl: str) -> torch.Tensor:
        """Global rows at fixed shapes (under torch.compile): the core with the global mask, where a
        global query sees every unpadded key whatever the window (window 0 keeps the discarded local
        rows cheap). Returns (B, H, T, D); only global rows are meaningful."""
        qg, kg, vg = (self._heads(linear(hidden, p)) for p in (self.query_global, self.key_global, self.value_global))
        return sliding_window_attention(qg, kg, vg, 0, attention_mask=attention_mask,
                                        global_attention_mask=global_mask, impl=impl)

    def _global_rows_export(self, context: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                            global_mask: torch.Tensor) -> torch.Tensor:
        """Global rows for impl="export": the export kernel's part 3 (G x T attention, G computed in the
        graph) on queries projected from the G global rows only, as in eager mode; no T x T tensor.
        Whether the key/value projections are folded into the queries is decided in the graph
        (`torch.cond`, an ONNX If), since G is known only at run time."""
        slots = GlobalSlots(global_mask, attention_mask)
        h_glob = slots.take(hidden[:, None])[:, 0]  # (B, G, C)
        qg = self._heads(linear(h_glob, self.query_global))  # (B, H, G, D)
        scale = self.head_dim**-0.5
        stat = torch.float64 if hidden.dtype == torch.float64 else torch.float32

        def folded(context, hidden, qg):
            rows = folded_global_rows(qg, hidden, self.key_global, self.value_global, attention_mask, scale)
            return slots.write_rows(context, rows)

        def projected(context, hidden, qg):
            kg, vg = (self._heads(linear(hidden, p)) for p in (self.key_global, self.value_global))
            return slots.write_rows(context, slots.attend_rows(qg, kg, vg, False, attention_mask, scale, stat))

        H, C = self.num_heads, hidden.shape[-1]
        fold = global_mask.sum(dim=1).max() * (H - 1) < C  # folding_pays, as a tensor
        return torch.cond(fold, folded, projected, (context, hidden, qg))

    def _overwrite_global_rows(self, context: torch.Tensor, hidden: torch.Tensor,
                               attention_mask: torch.Tensor | None, global_mask: torch.Tensor) -> torch.Tensor:
        """Global rows in eager mode: transformers' own formulation, a dense (G x T) softmax attention
        of the G global queries over every unpadded key with the global projections (G = most global
        tokens in a row). O(G * T) instead of a second pass over the whole band. With few global
        tokens (`folding_pays`) the key/value projections are folded into the queries instead of
        applied to all T tokens (`folded_global_rows`).

        context: (B, H, T, D) local result. Returns it with the global rows replaced.
        """
        B, H, T, D = context.shape
        counts = global_mask.sum(dim=1)  # (B,)
        G = int(counts.max())
        # Global positions first, in order (stable sort), then filler positions for rows with fewer.
        order = torch.argsort((~global_mask).to(torch.int8), dim=1, stable=True)[:, :G]  # (B, G)
        real = torch.arange(G, device=hidden.device)[None, :] < counts[:, None]  # (B, G)
        h_glob = hidden.gather(1, order[:, :, None].expand(B, G, hidden.shape[-1]))  # (B, G, C)
        qg = self._heads(linear(h_glob, self.query_global))  # (B, H, G, D)
        dropout = self.dropout if self.training else 0.0
        if folding_pays(G, H, hidden.shape[-1]):
            out = folded_global_rows(qg, hidden, self.key_global, self.value_global, attention_mask, D**-0.5, dropout)
            return self._write_global_rows(context, out, global_mask, real)
        kg = self._heads(linear(hidden, self.key_global))  # (B, H, T, D)
        vg = self._heads(linear(hidden, self.value_global))
        if dropout > 0:
            scores = torch.matmul(qg, kg.transpose(-1, -2)).float() * D**-0.5  # (B, H, G, T)
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask[:, None, None, :], float("-inf"))
            # A global row always sees itself, so no row is fully masked (no NaN).
            probs = nn.functional.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
            out = torch.matmul(probs.to(vg.dtype), vg)  # (B, H, G, D)
        else:
            # The same softmax attention without dropout, fused: kg and vg stay (B, T, H, D) memory (a
            # matmul made contiguous copies of them in bf16, and casts of the (B, H, G, T) scores)
            mask = None if attention_mask is None else attention_mask[:, None, None, :]
            out = nn.functional.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask)  # (B, H, G, D)
        return self._write_global_rows(context, out, global_mask, real)

    @staticmethod
    def _write_global_rows(context: torch.Tensor, out: torch.Tensor, global_mask: torch.Tensor,
                           real: torch.Tensor) -> torch.Tensor:
        """context (B, H, T, D) with the global positions' rows replaced by ``out`` (B, H, G, D)'s real slots."""
        b_idx, t_idx = global_mask.nonzero(as_tuple=True)  # row-major: matches `order` within each row
        values = out.transpose(1, 2)[real].to(context.dtype)  # (N, H, D)
        if not torch.is_grad_enabled():
            # no graph to keep: write the rows into the kernel's fresh output instead of a copy of it
            return context.transpose(1, 2).index_put_((b_idx, t_idx), values).transpose(1, 2)
        return context.transpose(1, 2).index_put((b_idx, t_idx), values).transpose(1, 2)
