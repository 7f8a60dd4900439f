"""Mean ± std over seeds of finished runs (``metrics.json`` files), as a Markdown table."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

COLUMNS = (("test", "accuracy"), ("test", "f1"), ("test", "macro_f1"), ("validation", "accuracy"),
           ("validation", "f1"))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 run)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(run_dirs: list[str | Path]) -> tuple[list[dict[str, Any]], str]:
    """Group runs by (model, max_length, split) and report each metric as mean ± sample std.

    Directories without ``metrics.json`` (unfinished runs) are listed as such, never averaged in.
    Returns (rows, markdown).
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    unfinished = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            unfinished.append(str(d))
            continue
        m = json.loads(path.read_text())
        cfg = m["config"]
        split = m.get("split", {}).get("name", cfg.get("validation") or "files")
        if m.get("split", {}).get("leaky"):
            split += " (LEAKY)"
        key = (cfg["model"], str(cfg.get("max_length") or "model max"), split)
        groups.setdefault(key, []).append(m)
    rows = []
    for (model, max_length, split), runs in groups.items():
        row: dict[str, Any] = {"model": model, "max_length": max_length, "split": split, "runs": len(runs),
                               "seeds": [r["config"]["seed"] for r in runs]}
        for part, name in COLUMNS:
            row[f"{part}_{name}"] = _mean_std([r[part][name] for r in runs if part in r and name in r[part]])
        row["train_time_s"] = _mean_std([r["train_time_s"] for r in runs])
        row["peak_memory_mb"] = _mean_std([r["peak_memory_mb"] for r in runs])
        row["epochs"] = sorted({r["epochs_run"] for r in runs})
        rows.append(row)
    head = ["model", "max_length", "split", "runs", "seeds", "epochs"] + [f"{p}_{n}" for p, n in COLUMNS] + \
        ["train_time_s", "peak_memory_mb"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    if unfinished:
        lines.append("")
        lines.append(f"unfinished (no metrics.json): {', '.join(unfinished)}")
    return rows, "\n".join(lines)
