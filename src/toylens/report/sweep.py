"""Sweeps in a report: a sweep directory stands for its finished members, plus one table of every
member (rank, varied values, status, best and final metrics, the error of a failed one).

Members are ranked by the sweep's selection metric at their best checkpoint (`best_value` of
sweep.json, in the direction `best_goal` that training recorded: the task's word on the metric),
best first; failed, interrupted and pending members come last, unranked.

Reads `SWEEP/sweep.json`, which `toylens sweep` writes beside the member run directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toylens.errors import ToylensError
from toylens.report.figures import Section, Table
from toylens.sweep.rank import Ranking, failed_last, ranking

# Bookkeeping columns of sweep.json rows that the table leaves out (the run directory says them).
HIDDEN = {"action", "log", "run_dir", "error"}


@dataclass
class SweepSummary:
    name: str
    path: Path
    members: list[dict[str, Any]]
    varied: list[str] = field(default_factory=list)
    """The dotted fields the sweep varies (its spec's parameters)."""


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
            sweep = SweepSummary(data["spec"]["name"], p, data["members"], list(data["spec"].get("parameters") or {}))
        except (KeyError, TypeError):
            raise ToylensError(f"{p / 'sweep.json'}: not a toylens sweep record (no spec.name or members)") from None
        sweeps.append(sweep)
        runs += [p / m["name"] for m in sweep.members if m["status"] == "done"]
    return runs, sweeps


def sweep_section(sweeps: list[SweepSummary]) -> Section | None:
    """One table per sweep, a row per member, ranked by the sweep's selection metric."""
    if not sweeps:
        return None
    if len(sweeps) == 1:
        by = _order_words(ranking(sweeps[0].members))
    else:
        by = "; ".join(f"{s.name}: {_order_words(ranking(s.members))}" for s in sweeps)
    guide = (
        "Every member of the sweep, ranked by the sweep's selection metric at the member's best checkpoint, "
        f"best first ({by}): its rank, the values it varies, its status, that best checkpoint and value, then "
        "its metrics after the last epoch. Failed, interrupted and pending members come last, unranked. "
        "Finished members also appear in the sections below."
    )
    return Section("sweep", "Sweep members", guide, [sweep_table(s) for s in sweeps])


def sweep_table(sweep: SweepSummary) -> Table:
    """The members as rows: rank, name, varied values, status, best checkpoint and value, the rest."""
    members, rank = sweep.members, ranking(sweep.members)
    hidden = HIDDEN | ({"best_metric", "best_goal"} if rank else set())  # the header and guide say them
    keys = list(dict.fromkeys(k for m in members for k in m))
    varied = [k for k in keys if k in sweep.varied]
    first = [c for c in ["name", *varied, "seed", "status", "best_checkpoint", "best_value"] if c in keys]
    columns = first + [c for c in keys if c not in hidden and c not in first]
    order = rank.order if rank else failed_last(members, range(len(members)))
    rows = [
        [rank.ranks[i] if rank else None, *[members[i].get(c) for c in columns], members[i].get("error") or ""]
        for i in order
    ]
    shown = [f"best {rank.metric}" if rank and c == "best_value" else c for c in columns]
    done = sum(m.get("status") == "done" for m in members)
    if rank:
        guide = f"Ranked by {rank.metric} at each member's best checkpoint, {_direction(rank)}."
    else:
        guide = (
            "Not ranked: the finished members share no selection metric with a recorded direction "
            "(a sweep.json written before toylens recorded it is rewritten, without training, by "
            "rerunning `toylens sweep SPEC`)."
        )
    title = f"{sweep.name}: {done} of {len(members)} members done ({sweep.path})"
    return Table(f"sweep-{sweep.name}", ["rank", *shown, "error"], rows, guide=guide, title=title)


def _order_words(rank: Ranking | None) -> str:
    return f"{rank.metric}, {_direction(rank)}" if rank else "not ranked"


def _direction(rank: Ranking) -> str:
    return "lowest first" if rank.goal == "min" else "highest first"
