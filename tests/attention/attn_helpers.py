"""Shared by the compiled-kernel and dropout tests."""
from __future__ import annotations

import pytest

from longformer import sliding_window_attention
from longformer.attention import compiled

needs_kernel = pytest.mark.skipif(not compiled.available(), reason="no C++ compiler: the compiled kernel is not built")


def grads(impl, q, k, v, dout, **kw):
    """[output, dq, dk, dv] of one implementation on leaf copies of q, k, v, for upstream gradient dout."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = sliding_window_attention(q, k, v, impl=impl, **kw)
    out.backward(dout)
    return [out.detach(), q.grad, k.grad, v.grad]
