"""Training-side behaviour: gradients equal transformers', zero (not None) gradients without global tokens,
gradient checkpointing, bf16 inference, torch.compile, DDP."""
from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch

from longformer.encoder import LongformerConfig, LongformerForSequenceClassification, LongformerModel

from encoder_helpers import awkward_batch, hf_config, make_hf

GLOBAL_PROJECTIONS = ("query_global", "key_global", "value_global")


def tiny_config(**kw) -> LongformerConfig:
    args = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=130, attention_window=[2, 3], type_vocab_size=2,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args.update(kw)
    return LongformerConfig(**args)


def test_gradients_match_transformers(tmp_path):
    pytest.importorskip("transformers")
    hf = make_hf("LongformerForSequenceClassification", hf_config((4, 8), num_labels=3))
    hf.save_pretrained(tmp_path)
    ours = LongformerForSequenceClassification.from_pretrained(tmp_path).train()
    hf.train()
    ids, mask, glob = awkward_batch(21)
    labels = torch.tensor([0, 2, 1])
    hf(ids, attention_mask=mask, global_attention_mask=glob, labels=labels).loss.backward()
    ours(ids, attention_mask=mask, global_attention_mask=glob, labels=labels).loss.backward()
    want = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        diff = (p.grad - want[name].grad).abs().max().item()
        assert diff <= 1e-4 * max(1.0, want[name].grad.abs().max().item()), (name, diff)


def test_no_global_token_gives_zero_gradients_not_none():
    model = LongformerModel(tiny_config(), add_pooling_layer=False)
    ids, mask, _ = awkward_batch(13)
    model(ids, attention_mask=mask).last_hidden_state.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if any(g in name for g in GLOBAL_PROJECTIONS):
            assert torch.count_nonzero(p.grad) == 0, name


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = LongformerForSequenceClassification(tiny_config()).train()
    ids, mask, glob = awkward_batch(17)
    labels = torch.tensor([1, 0, 1])
    model(ids, mask, glob, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.longformer.encoder.gradient_checkpointing
    model(ids, mask, glob, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-5, atol=1e-6, msg=n)


def test_bf16_inference_is_close_to_fp32():
    torch.manual_seed(0)
    model = LongformerModel(tiny_config()).eval()
    ids, mask, glob = awkward_batch(23)
    with torch.no_grad():
        ref = model(ids, mask, glob).last_hidden_state
        out = model.to(torch.bfloat16)(ids, mask, glob).last_hidden_state
    assert out.dtype == torch.bfloat16
    # LayerNorm-ed outputs are O(1); bf16 keeps ~3 significant digits through 2 layers.
    assert (out.float() - ref).abs().max().item() < 0.1
    assert (out.float() - ref).abs().mean().item() < 0.02


@pytest.mark.parametrize("backend", [
    "aot_eager",  # traces the whole model in one graph (what fullgraph=True checks) without codegen time
    pytest.param("inductor", marks=pytest.mark.slow),  # generated code too: ~1 min on 2 busy cores
])
def test_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    model = LongformerModel(tiny_config()).eval()
    ids, mask, glob = awkward_batch(16)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        want = model(ids, mask, glob).last_hidden_state
        got = compiled(ids, mask, glob).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, result_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A timeout turns a would-be hang (a rank waiting on gradients the other never reduces) into an error.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DistributedDataParallel(LongformerForSequenceClassification(tiny_config()).train())
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    ids, mask, _ = awkward_batch(12, seed=rank)
    # Rank 1's batches never have a global token; rank 0's do in the first step only.
    for step in range(2):
        glob = torch.zeros_like(ids)
        if rank == 0 and step == 0:
            glob[:, 0] = 1
        loss = model(ids, mask, glob, labels=torch.tensor([0, 1, 1])).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(flat, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_trains_when_a_batch_has_no_global_token(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the replicas stayed in sync


def test_bf16_autocast_training_step_matches_fp32_loss():
    torch.manual_seed(0)
    model = LongformerForSequenceClassification(tiny_config()).train()
    ids, mask, glob = awkward_batch(70)  # T > 64: the blocked kernel
    labels = torch.tensor([0, 1, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask, glob, labels=labels)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert abs(out.loss.item() - model(ids, mask, glob, labels=labels).loss.item()) < 1e-2


def test_attention_dropout_applies_in_training_only():
    """attention_probs_dropout_prob is applied in train mode (local rows through the core's hash mask,
    global rows through torch's dropout), repeatable with torch.manual_seed, and absent in eval mode."""
    torch.manual_seed(0)
    model = LongformerModel(tiny_config(attention_probs_dropout_prob=0.3))
    plain = LongformerModel(tiny_config())
    plain.load_state_dict(model.state_dict())
    ids, mask, glob = awkward_batch(40)
    model.train()
    torch.manual_seed(1)
    a = model(ids, mask, glob).last_hidden_state
    torch.manual_seed(1)
    b = model(ids, mask, glob).last_hidden_state
    c = model(ids, mask, glob).last_hidden_state
    assert torch.equal(a, b) and not torch.equal(a, c)
    with torch.no_grad():
        want = plain.eval()(ids, mask, glob).last_hidden_state
        assert not torch.allclose(a, want, atol=1e-3)
        torch.testing.assert_close(model.eval()(ids, mask, glob).last_hidden_state, want, atol=1e-6, rtol=1e-6)
    a.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
