"""The export kernel (impl="export") beyond the shared grid of test_blocked.py (which runs it against
the reference over dtypes, odd lengths, windows, dilation, causal, globals and padding): exact float64
gradients, its traced graph at lengths other than the traced one, and its limits."""
from __future__ import annotations

import pytest
import torch

from longformer import sliding_window_attention
from longformer.attention.exportable import exportable_attention


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,window,dilation", [(2, 0, (1,)), (6, 1, (1, 2)), (9, 2, (3, 1)), (5, 9, (2,)), (40, 3, (1, 4))])
def test_gradcheck_float64(T, window, dilation, causal):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, len(dilation), T, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    key_valid = torch.ones(2, T, dtype=torch.bool)
    key_valid[1, -1] = False
    is_global = torch.zeros(2, T, dtype=torch.bool)
    is_global[0, T // 2] = True
    is_global[0, 0] = True  # row 0: two global tokens, row 1: none

    def f(q, k, v):
        return exportable_attention(q, k, v, window, dilation, causal, key_valid, is_global, 0.7)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, fast_mode=True)


def test_no_dropout():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="impl='export' has no attention dropout"):
        sliding_window_attention(q, q, q, 2, dropout_p=0.1, impl="export")


class _Attention(torch.nn.Module):
    def __init__(self, window, dilation, causal):
        super().__init__()
        self.window, self.dilation, self.causal = window, dilation, causal

    def forward(self, q, k, v, attention_mask, global_attention_mask):
        return sliding_window_attention(q, k, v, self.window, dilation=self.dilation, causal=self.causal,
                                        attention_mask=attention_mask, global_attention_mask=global_attention_mask,
                                        impl="export")


def _inputs(B, H, T, D, globals_per_row, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[-1, T - T // 3:] = 0
    glob = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(globals_per_row):
        glob[b, torch.randperm(T, generator=g)[:n]] = 1
    return q, k, v, mask, glob


@pytest.mark.parametrize("causal", [False, True])
def test_torch_export_dynamic_length(causal):
    """One trace (T=64, one global token per row) serves other lengths and global counts exactly."""
    model = _Attention(3, (1, 2, 1, 3), causal)
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2, max=4096)
    axes = {0: batch, 2: seq}
    shapes = {"q": axes, "k": axes, "v": axes, "attention_mask": {0: batch, 1: seq},
              "global_attention_mask": {0: batch, 1: seq}}
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        program = torch.export.export(model, _inputs(2, 4, 64, 8, (1, 1), 0), dynamic_shapes=shapes, strict=False)
    run = program.module()
    for T, counts in ((2, (0, 1)), (37, (0, 5)), (300, (7, 1, 0))):
        args = _inputs(len(counts), 4, T, 8, counts, T)
        q, k, v, mask, glob = args
        want = sliding_window_attention(q, k, v, 3, dilation=(1, 2, 1, 3), causal=causal, attention_mask=mask,
                                        global_attention_mask=glob, impl="reference")
        torch.testing.assert_close(run(*args), want, atol=1e-5, rtol=1e-5)
