"""Ranking a sweep's members by its selection metric: the members ordered by `best_value` (the
metric at each member's best checkpoint) in the direction `best_goal` that training recorded (the
task's word on the metric), best first; failed, interrupted and pending members last, unranked.
Used by the `toylens sweep` table and the report's "Sweep members" section."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


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
    return Ranking(metric, goal, ranks, scored + failed_last(members, (i for i, r in enumerate(ranks) if r is None)))


def failed_last(members: list[dict[str, Any]], indices: Iterable[int]) -> list[int]:
    return sorted(indices, key=lambda i: members[i].get("status") == "failed")  # stable: else in the given order


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
