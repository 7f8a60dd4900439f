"""Benchmark workers shared by `bench model` and `bench export`: one process per implementation, kept
alive, their runs interleaved.

Each implementation runs in its own process, so that the peak memory it reports is its own. The
processes stay alive between runs and take turns (round-robin, the first of each round rotating),
so that a change in the machine's speed during a bench (this project's 2-core VM drifts by tens of
percent over minutes) slows every implementation alike instead of whichever ran at that time: the
ratios the benches report are between runs made side by side.

Protocol (one JSON object per line on the worker's stdout): the worker loads, prints a "ready" line,
then answers "run" (one timed step: {"seconds": s}) and "finish" (peak memory; the last output
saved where the spec's "output_path" says) read from its stdin.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .._memory import reset_peak, rss_mb



@dataclass
class Bench:
    """What a worker runs: ``step()`` one timed call (returns its output); ``save(output, path)``
    writes the last output for the cross-implementation check; ``device`` "cuda" measures the
    allocator's peak instead of RSS (and synchronises after each step)."""

    step: Callable[[], Any]
    save: Callable[[Any, str], None]
    device: str = "cpu"


class Worker:
    """One implementation's process (`python -m <module> <spec.json>`, which calls `serve`)."""

    def __init__(self, module: str, spec: dict[str, Any], name: str, tmp: Path) -> None:
        self.name = name
        path = tmp / f"spec-{name}.json"
        path.write_text(json.dumps(spec))
        # stderr to a file, not a pipe: a chatty worker could fill a pipe nobody reads while we wait on stdout
        self.stderr: TextIO = (tmp / f"stderr-{name}.txt").open("w+")
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", module, str(path)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self.read()  # "ready": loaded, memory baseline taken

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise RuntimeError(f"bench worker {self.name} failed (exit {self.proc.returncode}):\n"
                               f"{self.stderr.read()[-3000:]}")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def run_interleaved(module: str, specs: dict[str, dict[str, Any]], runs: int, warmup: int, tmp: Path,
                    label: str = "") -> dict[str, dict[str, Any]]:
    """Start one worker per entry of ``specs`` (name -> spec), run them round-robin ``runs`` times and
    return name -> {"seconds": median of the runs after ``warmup``, "all_seconds", memory fields}."""
    workers: dict[str, Worker] = {}
    try:
        for name, spec in specs.items():
            workers[name] = Worker(module, spec, f"{label}{name}", tmp)
        seconds: dict[str, list[float]] = {name: [] for name in specs}
        order = list(specs)
        for i in range(runs):
            for name in order[i % len(order):] + order[: i % len(order)]:
                seconds[name].append(workers[name].ask("run")["seconds"])
        return {name: {"seconds": statistics.median(seconds[name][warmup:]), "all_seconds": seconds[name],
                       **worker.ask("finish")} for name, worker in workers.items()}
    finally:
        for worker in workers.values():
            worker.close()


def serve(spec: dict[str, Any], prepare: Callable[[dict[str, Any]], Bench]) -> None:
    """The worker's main loop (see the module docstring)."""
    import torch

    bench = prepare(spec)
    cuda = bench.device == "cuda"
    gc.collect()
    if cuda:  # GPU memory: the allocator's own peak, from what the loaded model holds
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak()  # then the baseline, read after the reset (see longformer._memory)
        before, _ = rss_mb()

    def reply(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    reply({"ready": True})
    out = None
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            start = time.perf_counter()
            out = bench.step()
            if cuda:
                torch.cuda.synchronize()
            reply({"seconds": time.perf_counter() - start})
        elif command == "finish":
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb()[1]
            if spec.get("output_path") and out is not None:
                bench.save(out, spec["output_path"])
            # A peak under the baseline is Linux's lazy RSS accounting, i.e. 0 extra (longformer._memory).
            reply({"rss_before_mb": before, "peak_mb": peak, "extra_peak_mb": max(0.0, peak - before),
                   "threads": torch.get_num_threads()})
            return
        else:
            raise ValueError(f"bench worker: unknown command {command!r} (expected run or finish)")
