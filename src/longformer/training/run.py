"""A training run's directory: one layout for every training command, saved crash-safely, resumed
only with the arguments it was started with.

Layout of ``OUT`` (every command)::

    OUT/last/              the resume point, replaced as a whole at every save (staging dir + rename)
        run.json           command, the arguments that decide the result, schedule length, step, finished
        trainer_state.pt   optimizer, RNG states, loop position (what the loop needs to continue exactly)
        ...                the loop's own files (weights, configs, tokenizer)
    OUT/...                the loop's other outputs (log.csv, best/, metrics.json, curve.png)

A save builds ``.last.PID.*.tmpdir`` and swaps it in with `replace_dir`; a kill at any moment leaves
the old ``last``, the new one, or only ``.last.old`` (between the two renames), which `RunDir.start`
puts back with `recover_dir`. Temp files and staging dirs left by killed writers are removed by
`clean_stale_temps` when the next run starts.

Resume rule (`RunDir.start`): every stored argument must equal the new one, or a `ResumeError` lists
each difference (``--lr: 3e-05 -> 0.01``). Data and model arguments are stored as fingerprints
(size and sha256 of the content), so a changed file is caught even under the same name. The
schedule length (``--steps``, ``--epochs``, ``--max-steps``) may only grow, and only with
``--extend``. Resuming a finished run raises `RunFinished` (the commands print it and exit 0).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import atomic_write_json, clean_stale_temps, read_json, read_torch, recover_dir, replace_dir, staging_dir
from ..errors import LongformerError, ResumeError
from .distributed import DistContext, barrier

LAST, RUN_FILE, STATE_FILE = "last", "run.json", "trainer_state.pt"
FORMAT = 1  # version of run.json


class RunExistsError(LongformerError, FileExistsError):
    """``--out`` already holds a run and ``--resume`` was not given."""


class RunFinished(Exception):
    """``--resume`` of a run that already reached its end: nothing to train. Not an error (exit 0)."""


# --- fingerprints ----------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """What a data or model argument *is*: for a file its size and sha256, for a directory the same
    over its files (names included), so equal content under another path compares equal and a file
    edited in place does not. None stays None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": _sha256(path)}
    if path.is_dir():
        h, size = hashlib.sha256(), 0
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = file.relative_to(path).as_posix()
            h.update(f"{rel}\0{_sha256(file)}\0".encode())
            size += file.stat().st_size
        return {"path": str(path.resolve()), "bytes": size, "sha256": h.hexdigest()}
    raise FileNotFoundError(f"{path} does not exist")


def _is_fingerprint(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"path", "bytes", "sha256"}


def _show(value: Any) -> str:
    if _is_fingerprint(value):
        return f"{value['path']} ({value['bytes']} bytes, sha256 {value['sha256'][:12]})"
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value and not _is_fingerprint(value):
        for key in value:
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten(f"{prefix}[{i}]", item, out)
    else:
        out[prefix] = value


def _same(a: Any, b: Any) -> bool:
    if _is_fingerprint(a) and _is_fingerprint(b):
        return (a["bytes"], a["sha256"]) == (b["bytes"], b["sha256"])
    return a == b


def differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``name: old -> new`` for every argument (nested dicts flattened to ``a.b``, lists of dicts to
    ``a[i].b``) that differs between two argument dicts; a missing key shows as ``(none)``."""
    a, b = {}, {}
    _flatten("", _jsonable(stored), a)
    _flatten("", _jsonable(new), b)
    missing = object()
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        old, now = a.get(key, missing), b.get(key, missing)
        if old is missing or now is missing or not _same(old, now):
            out.append(f"{key}: {'(none)' if old is missing else _show(old)} -> {'(none)' if now is missing else _show(now)}")
    return out


def _jsonable(value: Any) -> Any:
    """The value as run.json would give it back (tuples become lists, ...)."""
    return json.loads(json.dumps(value))


def _longer(old: Any, new: Any) -> bool | None:
    """Whether schedule value ``new`` is longer than ``old`` (None = unlimited); None when equal."""
    inf = float("inf")
    a, b = (inf if old is None else old), (inf if new is None else new)
    return None if a == b else b > a


# --- the run directory -----------------------------------------------------------------------------

@dataclass
class RunSpec:
    """What a run is: ``args`` (everything that changes the result, with fingerprints for files;
    keys named like the command-line flags) and ``schedule`` (the run's length, e.g.
    ``{"--steps": 300}``), which ``--extend`` may grow. ``extend_hint`` completes the message of a
    finished run ("pass --extend --steps M to train further")."""

    command: str
    args: dict[str, Any]
    schedule: dict[str, Any]
    extend_hint: str = "--extend with a longer schedule"


@dataclass
class Resumed:
    """The saved state of a run being resumed."""

    directory: Path  # OUT/last
    run: dict[str, Any]  # run.json as saved
    state: dict[str, Any]  # trainer_state.pt
    extended: bool  # the schedule grew with this resume
    finished: bool = False  # the run had reached its end and was not extended

    @property
    def step(self) -> int:
        return int(self.run["step"])


@dataclass
class RunDir:
    """``OUT`` of one training run; see the module docstring for the layout and the rules."""

    out: Path
    spec: RunSpec
    ctx: DistContext = field(default_factory=DistContext)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    @property
    def last(self) -> Path:
        return self.out / LAST

    def start(self, *, resume: bool, extend: bool = False, markers: Iterable[str] = (),
              log: Callable[[str], None] | None = None) -> Resumed | None:
        """Clean up after a killed run, then: a new run (None) or the state to resume from.

        ``markers``: other names in ``OUT`` that mean it already holds a run (``best``, say). Raises
        `RunExistsError` (a run is there, no ``resume``), `ResumeError` (arguments differ, or the run
        cannot be resumed). Every rank gets the same answer.
        """
        if self.ctx.is_main:
            clean_stale_temps(self.out)
            recover_dir(self.last)
        barrier(self.ctx)
        has_last = self.last.exists()
        if not resume:
            taken = [name for name in (LAST, *markers) if (self.out / name).exists()]
            if taken:
                raise RunExistsError(f"--out {self.out} already holds a run ({', '.join(taken)}); pass --resume to "
                                     "continue it, or choose another --out")
            return None
        if not has_last:
            if log is not None and self.ctx.is_main:
                log(f"--resume: nothing to resume in {self.out} (no {LAST}/ yet), starting a new run")
            return None
        if not (self.last / RUN_FILE).is_file():
            raise ResumeError(f"{self.last} has no {RUN_FILE}: it was written by an older version that did not store "
                              "the run's arguments, so it cannot be resumed safely; start a new --out")
        run = read_json(self.last / RUN_FILE)
        problems = [] if run.get("command") == self.spec.command else \
            [f"command: {run.get('command')} -> {self.spec.command}"]
        problems += differences(run.get("args", {}), self.spec.args)
        extended = False
        stored_schedule = run.get("schedule", {})
        for key in sorted(set(stored_schedule) | set(self.spec.schedule)):
            old, new = stored_schedule.get(key), self.spec.schedule.get(key)
            longer = _longer(old, new)
            if longer is None:
                continue
            if not longer:
                problems.append(f"{key}: {_show(old)} -> {_show(new)} (a run cannot be shortened)")
            elif not extend:
                problems.append(f"{key}: {_show(old)} -> {_show(new)} (pass --extend to train further)")
            else:
                extended = True
        if problems:
            # one line (the CLI prints errors as one line): the differences separated by "; "
            raise ResumeError(f"--resume: the run in {self.out} was started with other arguments ("
                              + "; ".join(problems) + "); resume it with the same ones, or start a new --out")
        state = read_torch(self.last / STATE_FILE, "training state")
        return Resumed(self.last, run, state, extended, finished=bool(run.get("finished")) and not extended)

    def finished_error(self, resumed: Resumed) -> RunFinished:
        return RunFinished(f"the run in {self.out} already finished at step {resumed.step}; pass "
                           f"{self.spec.extend_hint} to train further")

    def save(self, state: dict[str, Any], *, step: int, finished: bool,
             write_files: Callable[[Path], None] | None = None) -> None:
        """Write ``OUT/last`` anew (rank 0; every rank waits for it): ``write_files(dir)`` adds the
        loop's files, then trainer_state.pt and run.json; the dir is swapped in whole."""
        import torch

        if self.ctx.is_main:
            staged = staging_dir(self.last)
            if write_files is not None:
                write_files(staged)
            torch.save(state, staged / STATE_FILE)  # replace_dir fsyncs every file before the swap
            run = {"format": FORMAT, "command": self.spec.command, "args": _jsonable(self.spec.args),
                   "schedule": _jsonable(self.spec.schedule), "step": step, "finished": finished,
                   "world_size": self.ctx.world_size, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (staged / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
            replace_dir(staged, self.last)
        barrier(self.ctx)

    def write_json(self, name: str, data: Any) -> None:
        """An output file of the run (metrics.json, ...), written atomically by rank 0."""
        if self.ctx.is_main:
            atomic_write_json(self.out / name, data)


class StopFlag:
    """Catch SIGINT/SIGTERM while a loop runs: the loop saves at the next step boundary and stops.

    Use as a context manager; the previous handlers are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.signum = signum

    def __enter__(self) -> StopFlag:
        self._old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    @property
    def set(self) -> bool:
        return self.signum is not None
