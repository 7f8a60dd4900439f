from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lm_helpers import micro_config

from longformer.lm.data import SymbolStream
from longformer.lm.evaluate import evaluate_bpc, plan_windows
from longformer.lm.model import LongformerLM


@pytest.mark.parametrize("n,seq_len,context", [(2, 1, 0), (100, 10, 0), (100, 10, 9), (101, 16, 5), (7, 50, 20)])
def test_plan_scores_every_symbol_once_with_enough_context(n, seq_len, context):
    scored = []
    for k, (start, first) in enumerate(plan_windows(n, seq_len, context)):
        last = min(start + seq_len, n - 1)
        targets = range(first, last + 1)
        assert len(targets) >= 1 and first - start >= 1  # every target has its previous symbol as input
        if k > 0:
            assert all(j - start >= context for j in targets)
        scored.extend(targets)
    assert scored == list(range(1, n))


def test_plan_rejects_bad_context():
    with pytest.raises(ValueError, match="context"):
        list(plan_windows(10, 4, 4))


def _stream(tmp_path: Path, n: int) -> SymbolStream:
    path = tmp_path / "data.bin"
    path.write_bytes(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes())
    return SymbolStream(path, "train", "bytes")  # the train split is the first 90%


def test_single_window_equals_direct_computation(tmp_path: Path):
    torch.manual_seed(0)
    model = LongformerLM(micro_config()).eval()
    stream = _stream(tmp_path, 100)  # 90 train symbols
    x = torch.from_numpy(stream.get(0, 90))[None]
    with torch.no_grad():
        nll = F.cross_entropy(model(x[:, :-1])[0], x[0, 1:], reduction="sum")
    res = evaluate_bpc(model, stream, seq_len=200, context=10)
    assert res["scored"] == 89 and res["windows"] == 1
    assert math.isclose(res["bpc"], float(nll) / 89 / math.log(2), rel_tol=1e-6)


def test_overlap_gives_exact_scores_for_a_local_model(tmp_path: Path):
    # The micro model sees 13 symbols back; with >= 13 symbols of context every window reproduces
    # the full-sequence prediction exactly, whatever the window length.
    torch.manual_seed(0)
    model = LongformerLM(micro_config()).eval()
    stream = _stream(tmp_path, 400)
    full = evaluate_bpc(model, stream, seq_len=400, context=0)["bpc"]
    for seq_len, context in ((20, 13), (37, 16), (64, 30)):
        got = evaluate_bpc(model, stream, seq_len, context, batch_size=3)
        assert got["windows"] > 1
        assert math.isclose(got["bpc"], full, rel_tol=1e-5), (seq_len, context)
    # Too little context changes the scores: the overlap is doing real work.
    assert not math.isclose(evaluate_bpc(model, stream, 20, 0)["bpc"], full, rel_tol=1e-5)


def test_max_symbols_limits_the_split(tmp_path: Path):
    model = LongformerLM(micro_config()).eval()
    res = evaluate_bpc(model, _stream(tmp_path, 1000), 32, 8, max_symbols=100)
    assert res["scored"] == 99
