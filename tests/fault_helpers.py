"""Fault injection for training commands: SIGKILL a real training process at seeded random moments,
restart it with --resume each time, and let the last start finish (tests/lm, tests/finetune)."""
from __future__ import annotations

import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# what a killed writer leaves: .NAME.PID.RANDOM.tmp / .tmpdir (longformer._files), .NAME.old (replace_dir)
_LEFTOVER = re.compile(r"^\..+\.(\d+\.[^.]+\.tmp(dir)?|old)$")


def leftovers(out: Path) -> list[str]:
    """Temp files, staging dirs and ``.NAME.old`` dirs in a run directory (recursively)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if _LEFTOVER.match(p.name))


def kill_repeatedly(argv: list[str], env: dict[str, str], *, kills: int, seed: int, delays: tuple[float, float],
                    check: Callable[[], None], log: Path, timeout: float = 300) -> int:
    """Run ``python argv`` and SIGKILL it after a random delay in ``delays`` (seconds), then start it
    again with ``--resume``, at most ``kills`` times; ``check()`` runs after every kill (the run
    must be readable then). A start that exits by itself must exit 0 (a resume that fails is a
    bug). Finally one more ``--resume`` start runs to the end. Returns how many kills hit a running
    process."""
    rng = random.Random(seed)
    hits = 0
    for attempt in range(kills):
        cmd = [sys.executable, *argv, *(["--resume"] if attempt else [])]
        with open(log, "a") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                code = proc.wait(timeout=rng.uniform(*delays))
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL: no handler runs, no file is closed cleanly
                proc.wait()
                hits += 1
                check()
                continue
        assert code == 0, f"start {attempt} exited with {code}:\n{log.read_text()[-3000:]}"
    final = subprocess.run([sys.executable, *argv, "--resume"], env=env, capture_output=True, text=True,
                           timeout=timeout)
    assert final.returncode == 0, final.stderr[-3000:]
    return hits
