"""Sweeps in a report: a sweep directory stands for its finished members, plus one table of every
member (rank, varied values, status, best and final metrics, the error of a failed one).

Members are ranked by the sweep's selection metric at their best checkpoint (`best_value` of
sweep.json, in the direction `best_goal` that training recorded: the task's word on the metric),
best first; failed, interrupted and pending members come last, unranked.

Reads `SWEEP/sweep.json`, which `toylens sweep` writes beside the member run directories.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Ranking:
    """How a sweep's members are ordered: the selection metric, its goal, and each member's rank
    (None for a member without a best value)."""

    metric: str
    goal: str
    ranks: list[int | None]
    order: list[int]
    """Member indices, best first, then the unranked (failed ones last)."""


def ranking(members: list[dict[str, Any]]) -> Ranking | None:
    """The members ranked by best_value in the direction of best_goal, ties sharing a rank (1, 2, 2,
    4); None when the finished members do not share one metric and goal (or record none), since
    values of different metrics cannot be ranked together."""
    scored = [i for i, m in enumerate(members) if _finite(m.get("best_value"))]
    metrics = {(members[i].get("best_metric"), members[i].get("best_goal")) for i in scored}
    if len(metrics) != 1:
        return None
    ((metric, goal),) = metrics
    if not isinstance(metric, str) or goal not in ("min", "max"):
        return None
    sign = 1.0 if goal == "min" else -1.0
    scored.sort(key=lambda i: sign * members[i]["best_value"])  # stable: ties keep sweep order
    ranks: list[int | None] = [None] * len(members)
    for place, i in enumerate(scored):
        prev = scored[place - 1]
        tied = place > 0 and members[prev]["best_value"] == members[i]["best_value"]
        ranks[i] = ranks[prev] if tied else place + 1
    return Ranking(metric, goal, ranks, scored + _failed_last(members, (i for i, r in enumerate(ranks) if r is None)))


def sweep_table(sweep: SweepSummary) -> Table:
    """The members as rows: rank, name, varied values, status, best checkpoint and value, the rest."""
    members, rank = sweep.members, ranking(sweep.members)
    hidden = HIDDEN | ({"best_metric", "best_goal"} if rank else set())  # the header and guide say them
    keys = list(dict.fromkeys(k for m in members for k in m))
    varied = [k for k in keys if k in sweep.varied]
    first = [c for c in ["name", *varied, "seed", "status", "best_checkpoint", "best_value"] if c in keys]
    columns = first + [c for c in keys if c not in hidden and c not in first]
    order = rank.order if rank else _failed_last(members, range(len(members)))
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


def _failed_last(members: list[dict[str, Any]], indices: Iterable[int]) -> list[int]:
    return sorted(indices, key=lambda i: members[i].get("status") == "failed")  # stable: else in the given order


def _order_words(rank: Ranking | None) -> str:
    return f"{rank.metric}, {_direction(rank)}" if rank else "not ranked"


def _direction(rank: Ranking) -> str:
    return "lowest first" if rank.goal == "min" else "highest first"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
