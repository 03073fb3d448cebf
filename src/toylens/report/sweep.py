"""Sweeps in a report: a sweep directory stands for its finished members, plus one table of every
member (varied values, status, final and best metrics, the error of a failed one).

Reads `SWEEP/sweep.json`, which `toylens sweep` writes beside the member run directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toylens.errors import ToylensError
from toylens.report.figures import Section, Table

# Bookkeeping columns of sweep.json rows that the table leaves out (the run directory says them).
HIDDEN = {"action", "log", "run_dir", "error"}


@dataclass
class SweepSummary:
    name: str
    path: Path
    members: list[dict[str, Any]]


def is_sweep_dir(path: Path) -> bool:
    return (path / "sweep.json").is_file() and not (path / "manifest.json").is_file()


def expand_sweeps(paths: list[str | Path]) -> tuple[list[Path], list[SweepSummary]]:
    """Run directories to report on (each sweep replaced by its finished members), and the sweeps."""
    runs: list[Path] = []
    sweeps: list[SweepSummary] = []
    for p in map(Path, paths):
        if not is_sweep_dir(p):
            runs.append(p)
            continue
        try:
            data = json.loads((p / "sweep.json").read_text())
        except json.JSONDecodeError as e:
            raise ToylensError(f"{p / 'sweep.json'}: not valid JSON ({e})") from None
        try:
            sweep = SweepSummary(data["spec"]["name"], p, data["members"])
        except (KeyError, TypeError):
            raise ToylensError(f"{p / 'sweep.json'}: not a toylens sweep record (no spec.name or members)") from None
        sweeps.append(sweep)
        runs += [p / m["name"] for m in sweep.members if m["status"] == "done"]
    return runs, sweeps


def sweep_section(sweeps: list[SweepSummary]) -> Section | None:
    """One table per sweep, a row per member."""
    if not sweeps:
        return None
    tables = []
    for sweep in sweeps:
        columns = [c for c in dict.fromkeys(k for m in sweep.members for k in m) if c not in HIDDEN]
        rows = [[m.get(c) for c in columns] + [m.get("error") or ""] for m in sweep.members]
        done = sum(m["status"] == "done" for m in sweep.members)
        tables.append(
            Table(
                f"sweep-{sweep.name}",
                [*columns, "error"],
                rows,
                title=f"{sweep.name}: {done} of {len(sweep.members)} members done ({sweep.path})",
            )
        )
    guide = (
        "Every member of the sweep: the values it varies, its status, and its metrics after the last "
        "epoch (best_value is the selection metric at its best checkpoint). Finished members also "
        "appear in the sections below."
    )
    return Section("sweep", "Sweep members", guide, tables)
