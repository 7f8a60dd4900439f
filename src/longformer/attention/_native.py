"""Build, cache and load the fused CPU kernel (_kernel.cpp and the headers it includes) with the
system C++ compiler.

The kernel is plain C++ (no torch headers), so building it takes a few seconds (2.3-3.6 s measured
with g++ 12 on a 2-core machine). It is built once
per (sources, compiler, flags, CPU) into the cache (``$LONGFORMER_CACHE/kernels`` or
``~/.cache/longformer/kernels``), atomically, and loaded with ctypes; other processes reuse the
file. Where no compiler works, `load()` returns None with the reason in `status()`, and callers fall
back to the pure-PyTorch blocked kernel. ``LONGFORMER_NO_COMPILE=1`` forces that fallback.

OpenMP: the library links libgomp.so.1, the soname of the copy torch ships and has loaded already,
so the dynamic loader reuses torch's OpenMP runtime instead of starting a second thread pool.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .._files import cache_root

SOURCE = Path(__file__).with_name("_kernel.cpp")
HEADERS = ("_kernel_simd.h", "_kernel_work.h", "_kernel_global.h")  # included by SOURCE, in its directory
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno"]


@dataclass
class Status:
    available: bool = False
    path: str | None = None
    build_s: float | None = None  # seconds spent compiling in this process (None: reused from the cache)
    reason: str = ""  # why it is not available


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: Status | None = None


def status() -> Status:
    """Whether the compiled kernel is usable, where it lives, and what building it cost here."""
    load()
    assert _status is not None
    return _status


def forget() -> None:
    """Drop the loaded library and status, so the next `load()` looks again (the bench times a load)."""
    global _lib, _status
    with _lock:
        _lib, _status = None, None


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None where it cannot be built."""
    global _lib, _status
    if _status is not None:
        return _lib
    with _lock:
        if _status is None:
            try:
                _lib, _status = _load()
            except Exception as err:  # any failure means: use the fallback, and say why
                _lib, _status = None, Status(reason=f"{type(err).__name__}: {err}")
    return _lib


def _load() -> tuple[ctypes.CDLL | None, Status]:
    if os.environ.get("LONGFORMER_NO_COMPILE", "") not in ("", "0"):
        return None, Status(reason="LONGFORMER_NO_COMPILE is set")
    if platform.system() != "Linux":
        return None, Status(reason=f"the compiled kernel is built on Linux only (this is {platform.system()})")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        return None, Status(reason=f"no C++ compiler ({cxx!r} not found; set CXX or install g++)")
    import torch  # noqa: F401  (loads torch's libgomp.so.1 first, see the module docstring)

    path = _cache_path(cxx)
    build_s = None
    if not path.is_file():
        build_s = _build(cxx, path)
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    return lib, Status(available=True, path=str(path), build_s=build_s)


def _cache_path(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256()
    sources = [SOURCE.read_bytes(), *(SOURCE.with_name(h).read_bytes() for h in HEADERS)]
    for part in (*sources, version.encode(), " ".join(FLAGS).encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_root() / "kernels" / f"longformer_band_{key.hexdigest()[:16]}.so"


def _cpu_signature() -> str:
    """-march=native code runs only on CPUs with the same features: key the cache on them."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("flags", "model name"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(cxx: str, path: Path) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".so")
    os.close(fd)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        os.replace(tmp, path)  # atomic: a concurrent process sees the whole library or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - t0


def _declare(lib: ctypes.CDLL) -> None:
    p, i64p, u8p = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
    f, i = ctypes.c_float, ctypes.c_int
    lib.lf_simd_width.restype = i
    lib.lf_simd_width.argtypes = []
    lib.lf_global_rows_backward.restype = None
    lib.lf_global_rows_backward.argtypes = [i64p, p, p, p, p, p, p, p, p, p, u8p, i64p, i64p, f, i]
    lib.lf_bf16_dot_native.restype = i
    lib.lf_bf16_dot_native.argtypes = []
    lib.lf_band_forward.restype = None
    lib.lf_band_forward.argtypes = [i64p, p, p, p, p, p, u8p, u8p, i64p, i64p, f, i]
    lib.lf_band_backward.restype = None
    lib.lf_band_backward.argtypes = [i64p, p, p, p, p, p, p, p, p, p, p, u8p, u8p, u8p, i64p, i64p, f, i]
