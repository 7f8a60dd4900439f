"""Resident memory of this process (Linux /proc), the one reading every benchmark and the demo use.

`reset_peak()` then `rss_mb()`: the baseline is read after the reset, so the high-water mark read
later is never below it (read before, RSS can shrink in between and the extra peak come out
negative). Linux syncs per-thread RSS counters lazily, so VmHWM can still read a fraction of a MB
below a VmRSS read just before; callers treat a peak under the baseline as 0 extra.
"""
from __future__ import annotations

import re
from pathlib import Path


def rss_mb() -> tuple[float, float]:
    """(current, peak since the last `reset_peak`) resident memory of this process in MB
    (VmRSS, VmHWM)."""
    text = Path("/proc/self/status").read_text()
    rss, hwm = (int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM"))
    return rss, hwm


def reset_peak() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0), so what came before (loading a
    model briefly holds two copies of its weights) does not count as the measured call's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
