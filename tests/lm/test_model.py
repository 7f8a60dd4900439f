from __future__ import annotations

import pytest
import torch

from longformer.attention.reference import reference_attention
from longformer.lm.config import LMConfig, full_attention, get_preset, linear_windows, upper_layer_dilations
from longformer.lm.model import LongformerLM

from lm_helpers import micro_config


def _model(seed: int = 0, **kw) -> LongformerLM:
    torch.manual_seed(seed)
    return LongformerLM(micro_config(**kw)).eval()


def test_logits_shape_and_causality():
    model = _model()
    x = torch.randint(0, 256, (2, 40))
    y = x.clone()
    y[:, 25:] = torch.randint(0, 256, (2, 15))  # change the future only
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (2, 40, 256)
    torch.testing.assert_close(a[:, :25], b[:, :25], rtol=0, atol=0)
    assert not torch.allclose(a[:, 25:], b[:, 25:])


def test_receptive_field_is_exact():
    # Windows 3 and 5 with one head dilated by 2 in the top layer: position t sees back to t - 13.
    model = _model()
    assert model.config.receptive_field() == 13
    x = torch.randint(0, 256, (1, 60))
    t = 50
    far, near = x.clone(), x.clone()
    far[0, t - 14] = (far[0, t - 14] + 1) % 256
    near[0, t - 13] = (near[0, t - 13] + 1) % 256
    with torch.no_grad():
        base, f, n = model(x)[0, t], model(far)[0, t], model(near)[0, t]
    torch.testing.assert_close(base, f, rtol=0, atol=1e-6)
    assert not torch.allclose(base, n)


def test_rotary_positions_are_relative():
    # Shifting every position by 10,000 must not change the logits: what the model learned at
    # positions < L applies unchanged at 4L and beyond.
    model = _model()
    x = torch.randint(0, 256, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x, start_pos=10_000), rtol=1e-4, atol=1e-4)


def test_full_window_fast_path_matches_reference():
    # window >= T - 1 with no dilation takes the fused SDPA kernel; it must equal the spec.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ref = reference_attention(q, k, v, 36, (1, 1, 1), True, None, None, 8**-0.5)
    fast = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(fast, ref)
    model = _model(windows=(100, 100), dilations=((1, 1), (1, 1)))
    ref_model = _model(windows=(36, 36), dilations=((1, 1), (1, 1)))  # takes sliding_window_attention
    x = torch.randint(0, 256, (2, 38))
    with torch.no_grad():
        # with w = 36 rows 0..36 still see their whole history, so they must agree exactly
        torch.testing.assert_close(model(x)[:, :37], ref_model(x)[:, :37], rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    x = torch.randint(0, 256, (2, 24))
    grads = []
    for ckpt in (False, True):
        model = _model(grad_checkpointing=ckpt).train()
        model(x).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_set_windows_changes_pattern():
    model = _model()
    model.set_windows((1, 1))
    assert [b.attn.window for b in model.blocks] == [1, 1]
    with pytest.raises(ValueError, match="one per layer"):
        model.set_windows((1, 2, 3))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="windows must have n_layer=2"):
        micro_config(windows=(1, 2, 3))
    with pytest.raises(ValueError, match="vocab must be one of"):
        micro_config(vocab="words")
    with pytest.raises(ValueError, match="dilations must be"):
        micro_config(dilations=((1,), (1,)))
    with pytest.raises(ValueError, match="tokens must be a"):
        _model()(torch.zeros(3, dtype=torch.long))


def test_config_roundtrip_and_helpers():
    cfg = micro_config()
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    assert linear_windows(4, 16, 64) == (16, 32, 48, 64)
    assert upper_layer_dilations(3, 4, 2, {2: 3}) == ((1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 3, 3))


def test_paper_small_preset_matches_paper_size():
    preset = get_preset("paper-small")
    model = LongformerLM(preset.model)
    n = model.num_params()
    assert 38e6 < n < 44e6, n  # the paper reports ~41M
    assert [p.seq_len for p in preset.train.phases] == [2048, 4096, 8192, 16384, 23040]
    assert [p.window_bottom for p in preset.train.phases] == [32, 64, 128, 256, 512]
    lrs = [p.lr for p in preset.train.phases]
    assert lrs[0] == 2.5e-4 and all(b == a / 2 for a, b in zip(lrs, lrs[1:]))
    assert preset.model.n_layer == 12 and preset.model.d_model == 512 and preset.model.n_head == 8


def test_full_attention_preset_is_same_model():
    tiny, full = get_preset("tiny"), full_attention(get_preset("tiny"))
    assert full.model.d_model == tiny.model.d_model and full.model.n_layer == tiny.model.n_layer
    assert all(w >= 1 << 20 for w in full.model.windows)
    assert [p.seq_len for p in full.train.phases] == [p.seq_len for p in tiny.train.phases]
