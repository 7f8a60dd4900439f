from __future__ import annotations

import pytest
import torch
from lm_helpers import micro_config

from longformer.lm.generate import generate, new_caches, prefill, step
from longformer.lm.model import LongformerLM


def _incremental_logits(model: LongformerLM, x: torch.Tensor) -> torch.Tensor:
    caches = new_caches(model, x.shape[0], x.shape[1])
    return torch.stack([step(model, caches, x[:, t], t) for t in range(x.shape[1])], dim=1)


@pytest.mark.parametrize(
    "windows,dilations",
    [((3, 5), ((1, 1), (1, 2))),  # ring buffers of 4 and 11 slots wrap many times over 40 steps
     ((0, 2), ((1, 1), (3, 1))),  # w = 0 (only itself) and a dilated first layer
     ((200, 200), ((1, 1), (1, 1)))],  # full attention: the buffer is capped at the text length
)
def test_incremental_logits_equal_full_forward(windows, dilations):
    torch.manual_seed(0)
    model = LongformerLM(micro_config(windows=windows, dilations=dilations)).eval()
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = model(x)
    inc = _incremental_logits(model, x)
    torch.testing.assert_close(inc, full, rtol=1e-4, atol=1e-4)


def test_cache_keeps_only_the_window():
    torch.manual_seed(0)
    model = LongformerLM(micro_config(windows=(3, 5), dilations=((1, 1), (1, 2)))).eval()
    caches = new_caches(model, 1, 10_000)
    assert [c.size for c in caches] == [3 * 1 + 1, 5 * 2 + 1]


def test_greedy_generation_matches_full_forward_argmax():
    torch.manual_seed(0)
    model = LongformerLM(micro_config()).eval()
    prompt = torch.randint(0, 256, (1, 7))
    out = generate(model, prompt, 12, temperature=0)
    assert out.shape == (1, 19)
    assert torch.equal(out[:, :7], prompt)
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(logits[0, 6:].argmax(-1), out[0, 7:])


def test_sampling_is_seeded_and_top_k_restricts():
    torch.manual_seed(0)
    model = LongformerLM(micro_config()).eval()
    prompt = torch.randint(0, 256, (1, 5))
    a = generate(model, prompt, 20, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 20, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = model(a[:, :-1])[0, 4:]
    top3 = logits.topk(3, dim=-1).indices
    assert all(int(a[0, 5 + i]) in top3[i].tolist() for i in range(20))


def test_generate_rejects_bad_arguments():
    model = LongformerLM(micro_config()).eval()
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="top_k must be"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 3, top_k=0)
    with pytest.raises(ValueError, match="temperature must be"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 3, temperature=-1)


@pytest.mark.parametrize("T0", [1, 5, 30])
def test_prefill_fills_the_same_cache_as_stepping(T0):
    torch.manual_seed(0)
    model = LongformerLM(micro_config(windows=(3, 5), dilations=((1, 1), (1, 2)))).eval()
    x = torch.randint(0, 256, (2, T0 + 8))
    a, b = new_caches(model, 2, 100), new_caches(model, 2, 100)
    with torch.no_grad():
        logits_a = prefill(model, a, x[:, :T0])
        for t in range(T0):
            logits_b = step(model, b, x[:, t], t)
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-4, atol=1e-4)
    for t in range(T0, T0 + 8):  # and decoding goes on identically from either cache
        torch.testing.assert_close(step(model, a, x[:, t], t), step(model, b, x[:, t], t), rtol=1e-4, atol=1e-4)
