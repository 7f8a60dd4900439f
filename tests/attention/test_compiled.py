"""The compiled kernel beyond the shared grid in test_blocked.py: threading, splitting of sequences
across threads, its build cache, its fallback, and its errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from longformer import sliding_window_attention
from longformer.attention import compiled

from attn_helpers import grads, needs_kernel


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_sequences_and_threads(threads):
    """B*H < 2 * threads: each sequence is cut into block ranges whose key gradients overlap at the
    edges and whose global-key gradients meet under a lock. Run repeatedly to catch races."""
    g = torch.Generator().manual_seed(3)
    B, H, T, D = 1, 1, 700, 24  # D not a multiple of the SIMD width: padded columns
    q, k, v, dout = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    key_valid = torch.rand(B, T, generator=g) > 0.1
    is_global = torch.zeros(B, T, dtype=torch.bool)
    is_global[0, [0, 3, 350, 699]] = True
    kw = dict(window=37, attention_mask=key_valid, global_attention_mask=is_global)
    truth = grads("reference", q.double(), k.double(), v.double(), dout.double(), **kw)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(5):
            got = grads("compiled", q, k, v, dout, **kw)
            for name, t, x in zip(("out", "dq", "dk", "dv"), truth, got):
                torch.testing.assert_close(x.double(), t, atol=2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")
    finally:
        torch.set_num_threads(old)


@needs_kernel
def test_many_heads_dilated_globals_repeat():
    """Many sequences (dilated heads split by residue) sharing global keys, repeated for races."""
    g = torch.Generator().manual_seed(5)
    B, H, T, D = 2, 4, 333, 16
    q, k, v, dout = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    is_global = torch.rand(B, T, generator=g) < 0.05
    kw = dict(window=9, dilation=(1, 2, 3, 5), causal=True, global_attention_mask=is_global)
    truth = grads("reference", q.double(), k.double(), v.double(), dout.double(), **kw)
    for _ in range(5):
        for name, t, x in zip(("out", "dq", "dk", "dv"), truth, grads("compiled", q, k, v, dout, **kw)):
            torch.testing.assert_close(x.double(), t, atol=2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")


@needs_kernel
def test_auto_uses_the_compiled_kernel_on_cpu():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 600, 8, generator=g) for _ in range(3))
    auto = sliding_window_attention(q, k, v, 20)
    torch.testing.assert_close(auto, sliding_window_attention(q, k, v, 20, impl="compiled"), atol=0, rtol=0)


@needs_kernel
def test_rejects_float64_with_advice():
    q = torch.randn(1, 1, 10, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="impl='blocked'"):
        sliding_window_attention(q, q, q, 2, impl="compiled")


SCRIPT = """
import json, sys, time, torch
from longformer.attention import _native
from longformer import sliding_window_attention
t0 = time.perf_counter()
st = _native.status()
q = torch.randn(1, 2, 300, 8)
out = sliding_window_attention(q, q, q, 5)  # auto
err = None
try:
    sliding_window_attention(q, q, q, 5, impl="compiled")
except RuntimeError as e:
    err = str(e)
ref = sliding_window_attention(q, q, q, 5, impl="reference")
print(json.dumps(dict(available=st.available, build_s=st.build_s, reason=st.reason, path=st.path, err=err,
                      ok=bool(torch.allclose(out, ref, atol=1e-5)))))
"""


def run_script(env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fallback_without_compiler(tmp_path):
    """No compiler (or LONGFORMER_NO_COMPILE): auto still works (blocked kernel); asking for the compiled
    kernel says why it is missing and what to use instead."""
    r = run_script({"LONGFORMER_NO_COMPILE": "1", "LONGFORMER_CACHE": str(tmp_path)})
    assert not r["available"] and "LONGFORMER_NO_COMPILE" in r["reason"]
    assert r["ok"]
    assert "not available" in r["err"] and "impl='blocked'" in r["err"]
    r = run_script({"CXX": "no-such-compiler-xyz", "LONGFORMER_CACHE": str(tmp_path)})
    assert not r["available"] and "no-such-compiler-xyz" in r["reason"] and r["ok"]


@pytest.mark.skipif(not compiled.available(), reason="no C++ compiler")
def test_built_once_then_reused_from_cache(tmp_path):
    first = run_script({"LONGFORMER_CACHE": str(tmp_path)})
    assert first["available"] and first["build_s"] is not None and first["ok"]
    assert first["path"].startswith(str(tmp_path))
    second = run_script({"LONGFORMER_CACHE": str(tmp_path)})
    assert second["available"] and second["build_s"] is None and second["path"] == first["path"]
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [os.path.basename(first["path"])]


@needs_kernel
@pytest.mark.parametrize("march", ["x86-64", "skylake-avx512", "sapphirerapids"])
def test_compiles_for_other_cpus(tmp_path, march):
    """The code paths this machine's -march=native never compiles (no AVX, AVX-512 with emulated bf16
    pairs, AVX512-BF16 with vdpbf16ps) still compile; x86-64 ones are run by the tests on such CPUs."""
    import platform
    import shutil

    from longformer.attention import _native

    if platform.machine() != "x86_64":
        pytest.skip("x86 targets")
    flags = [f if f != "-march=native" else f"-march={march}" for f in _native.FLAGS]
    proc = subprocess.run([shutil.which("g++") or "g++", *flags, str(_native.SOURCE), "-o", str(tmp_path / "k.so")],
                          capture_output=True, text=True)
    if "unknown value" in proc.stderr or "bad value" in proc.stderr:
        pytest.skip(f"this compiler does not know -march={march}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    if march == "sapphirerapids" and shutil.which("objdump"):
        asm = subprocess.run(["objdump", "-d", str(tmp_path / "k.so")], capture_output=True, text=True).stdout
        assert "vdpbf16ps" in asm


def test_the_cache_key_covers_every_source_file(tmp_path, monkeypatch):
    """A change to any header the kernel includes builds a new library (not the cached old one)."""
    import shutil

    from longformer.attention import _native

    if shutil.which("g++") is None:
        pytest.skip("no g++")
    for name in (_native.SOURCE.name, *_native.HEADERS):
        shutil.copy(_native.SOURCE.with_name(name), tmp_path / name)
    monkeypatch.setattr(_native, "SOURCE", tmp_path / _native.SOURCE.name)
    keys = [_native._cache_path("g++")]
    for name in _native.HEADERS:
        with open(tmp_path / name, "a") as f:
            f.write("// changed\n")
        keys.append(_native._cache_path("g++"))
    assert len(set(keys)) == len(keys)
    text = _native.SOURCE.read_text() + "".join((tmp_path / h).read_text() for h in _native.HEADERS)
    included = set(re.findall(r'#include "([^"]+)"', text))
    assert included == set(_native.HEADERS), "HEADERS must list exactly the files the kernel includes"


@needs_kernel
def test_custom_op_registration():
    """torch's own checks of the custom op: schema, fake (meta) shapes, autograd registration, AOT."""
    from longformer.attention.compiled import band_attention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 70, 8, generator=g, requires_grad=True) for _ in range(3))
    is_global = torch.zeros(2, 70, dtype=torch.bool)
    is_global[0, 5] = True
    key_valid = torch.ones(2, 70, dtype=torch.bool)
    key_valid[1, 60:] = False
    for args in ((q, k, v, key_valid, is_global, 6, [1, 2], False, 0.3, 0.0, 0),
                 (q, k, v, None, None, 3, [1, 1], True, 0.5, 0.0, 0),
                 (q, k, v, key_valid, is_global, 4, [3, 1], True, 0.4, 0.25, 17)):
        torch.library.opcheck(band_attention, args)


@needs_kernel
def test_torch_compile_fullgraph_uses_the_kernel_forward_and_backward():
    """Under torch.compile(fullgraph=True) "auto" runs the compiled kernel (not the O(T^2) spec), and
    outputs and gradients equal the reference."""
    g = torch.Generator().manual_seed(2)
    q, k, v, dout = (torch.randn(1, 3, 150, 16, generator=g) for _ in range(4))
    key_valid = torch.rand(1, 150, generator=g) > 0.1
    is_global = torch.zeros(1, 150, dtype=torch.bool)
    is_global[0, [0, 77]] = True

    def f(q, k, v):
        return sliding_window_attention(q, k, v, 11, dilation=(1, 2, 1), attention_mask=key_valid,
                                        global_attention_mask=is_global)

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: g, bw_compiler=lambda g, _: g)(gm, example_inputs)

    fn = torch.compile(f, fullgraph=True, backend=backend)
    truth = grads("reference", q.double(), k.double(), v.double(), dout.double(), window=11, dilation=(1, 2, 1),
                  attention_mask=key_valid, global_attention_mask=is_global)
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = fn(qs, ks, vs)
    out.backward(dout)
    assert any("band_attention" in gr for gr in graphs)
    for name, t, x in zip(("out", "dq", "dk", "dv"), truth, [out.detach(), qs.grad, ks.grad, vs.grad]):
        torch.testing.assert_close(x.double(), t, atol=2e-5, rtol=2e-5, msg=name)
