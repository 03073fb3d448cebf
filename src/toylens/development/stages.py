"""Developmental stages from curves over training: smooth a curve, find its critical points, and
call them stage boundaries (Hoogland et al. 2024 read stages off the LLC curve this way).

    from toylens.development.stages import stage_boundaries
    bounds = stage_boundaries("test/loss", checkpoints, steps, values)
    [(b.kind, b.checkpoint, b.step) for b in bounds]   # [("fastest drop", "log-0019", 1150), ...]

Everything here is a pure function of (steps, values); `development.driver` applies it to a
run's saved curves (the loss, the LLC) and saves the result.

**Smoothing.** A Gaussian kernel average in log-step: the curve is read at u = log10(1 + step)
and each smoothed value is the mean of all values weighted by exp(-(u_i - u_j)² / 2h²), with
bandwidth h in decades of step (`BANDWIDTH`, 0.1 by default: a point 0.1 decade away, e.g. step
1,000 vs 1,260, weighs 0.61 of the point itself). Log-step because training changes on all time
scales: a fixed number of steps is an eternity early on and nothing late.

**Critical points** of the smoothed curve s(u), with slope s'(u) by centred differences in u:

    peak / trough     an interior local maximum / minimum of s whose prominence (the smaller of its
                      rises above the neighbouring extrema, or ends, on either side) is at least
                      `min_change` of the curve's range: a turn, not a wiggle
    fastest rise /    a local extremum of s' (an inflection of s) where |s'| is at least
    fastest drop      `steep` of the curve's largest |s'|: the middle of a transition
    plateau end /     where |s'| stays under `flat` of its largest value (a plateau) for two or more
    plateau start     points, the last / first point of that plateau beside a change

The boundaries are all of these, in step order, each with the checkpoint it falls on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Num = int | float

BANDWIDTH = 0.1
"""Gaussian smoothing bandwidth, in decades of (1 + step)."""
MIN_CHANGE = 0.1
"""A peak or trough counts when its prominence is at least this fraction of the curve's range."""
STEEP = 0.5
"""A slope extremum counts as a transition when |slope| is at least this fraction of the largest."""
FLAT = 0.1
"""The curve is on a plateau where |slope| is under this fraction of the largest."""
SMOOTHING = "Gaussian kernel average in u = log10(1 + step), bandwidth {h} decades"


@dataclass
class Boundary:
    """A stage boundary: a critical point of one curve, at one checkpoint."""

    curve: str
    kind: str
    """peak, trough, fastest rise, fastest drop, plateau end, plateau start."""
    index: int
    """Position in the curve's points."""
    checkpoint: str
    step: int
    value: float
    """The smoothed curve there."""

    def to_dict(self) -> dict[str, str | int | float]:
        return asdict(self)


def log_step(steps: Sequence[Num]) -> list[float]:
    return [math.log10(1.0 + s) for s in steps]


def smooth(steps: Sequence[Num], values: Sequence[Num], bandwidth: float = BANDWIDTH) -> list[float]:
    """The Gaussian kernel average of `values` in log10(1 + step) (module docstring); bandwidth 0:
    the values themselves."""
    if bandwidth <= 0:
        return [float(v) for v in values]
    u = log_step(steps)
    out = []
    for ui in u:
        weights = [math.exp(-((ui - uj) ** 2) / (2 * bandwidth**2)) for uj in u]
        out.append(sum(w * v for w, v in zip(weights, values)) / sum(weights))
    return out


def slope(steps: Sequence[Num], smoothed: Sequence[Num]) -> list[float]:
    """ds/du at each point, u = log10(1 + step): centred differences, one-sided at the ends."""
    u, n = log_step(steps), len(smoothed)
    if n < 2:
        return [0.0] * n
    out = []
    for i in range(n):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        out.append((smoothed[b] - smoothed[a]) / (u[b] - u[a]) if u[b] > u[a] else 0.0)
    return out


def critical_points(
    steps: Sequence[Num],
    values: Sequence[Num],
    *,
    bandwidth: float = BANDWIDTH,
    min_change: float = MIN_CHANGE,
    steep: float = STEEP,
    flat: float = FLAT,
) -> list[tuple[int, str]]:
    """(index, kind) of every critical point of the smoothed curve (module docstring), by index."""
    if len(steps) != len(values):
        raise ValueError(f"stages: {len(steps)} steps but {len(values)} values")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("stages: steps must increase")
    s = smooth(steps, values, bandwidth)
    if len(s) < 3:
        return []
    d = slope(steps, s)
    span, top = max(s) - min(s), max(abs(x) for x in d)
    if span == 0 or top == 0:
        return []
    found = _extrema(s, min_change * span) + _steepest(d, steep * top) + _plateau_edges(d, flat * top)
    return sorted(set(found))


def _extrema(s: Sequence[Num], min_prominence: float) -> list[tuple[int, str]]:
    # Turning points of s (a flat stretch counts once, at its first point), then prominence.
    turns = [0]
    for i in range(1, len(s) - 1):
        left = next((s[j] for j in range(i - 1, -1, -1) if s[j] != s[i]), s[i])
        if (s[i] - left) * (s[i] - s[i + 1]) > 0:
            turns.append(i)
    turns.append(len(s) - 1)
    out = []
    for k in range(1, len(turns) - 1):
        i, a, b = turns[k], turns[k - 1], turns[k + 1]
        if min(abs(s[i] - s[a]), abs(s[i] - s[b])) >= min_prominence:
            out.append((i, "peak" if s[i] > s[a] else "trough"))
    return out


def _steepest(d: Sequence[Num], threshold: float) -> list[tuple[int, str]]:
    out = []
    for i in range(len(d)):
        left = abs(d[i - 1]) if i > 0 else -1.0
        right = abs(d[i + 1]) if i + 1 < len(d) else -1.0
        if abs(d[i]) >= threshold and abs(d[i]) > left and abs(d[i]) >= right:
            out.append((i, "fastest rise" if d[i] > 0 else "fastest drop"))
    return out


def _plateau_edges(d: Sequence[Num], threshold: float) -> list[tuple[int, str]]:
    flat = [abs(x) < threshold for x in d]
    out = []
    i = 0
    while i < len(flat):
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(flat) and flat[j + 1]:
            j += 1
        if j > i:  # a plateau of two or more points
            if i > 0:
                out.append((i, "plateau start"))
            if j < len(flat) - 1:
                out.append((j, "plateau end"))
        i = j + 1
    return out


def stage_boundaries(
    curve: str,
    checkpoints: Sequence[str],
    steps: Sequence[int],
    values: Sequence[Num],
    *,
    bandwidth: float = BANDWIDTH,
    min_change: float = MIN_CHANGE,
    steep: float = STEEP,
    flat: float = FLAT,
) -> list[Boundary]:
    """The stage boundaries of one curve (`values` at `checkpoints`, `steps`), in step order."""
    s = smooth(steps, values, bandwidth)
    points = critical_points(steps, values, bandwidth=bandwidth, min_change=min_change, steep=steep, flat=flat)
    return [Boundary(curve, kind, i, checkpoints[i], int(steps[i]), s[i]) for i, kind in points]


def cluster_curves(curves: dict[str, Sequence[Num]], k: int = 2) -> dict[str, int]:
    """Group curves of the same length (e.g. each head's refined LLC at the checkpoints every head
    has) into `k` clusters by k-means on their values: curves close in level and shape over
    training share a cluster. (The values themselves, not their logs: a λ̂ near 0, as at
    initialisation, is noise, and a log would make the noise dominate.) Two clusters of at most
    `EXACT_UP_TO` curves: the best split, found by trying every one (the smallest within-cluster
    sum of squares). Otherwise Lloyd's iterations from `len(curves)` deterministic starts (each
    curve as the first centre, then repeatedly the curve farthest from the centres so far), the
    best result kept (a local optimum at worst). Clusters are numbered by their mean value, 0 the
    highest; fewer than k curves: each its own cluster."""
    names = list(curves)
    if not names:
        return {}
    if len({len(v) for v in curves.values()}) != 1:
        raise ValueError("cluster_curves: every curve needs the same length")
    x = [[float(v) for v in curves[n]] for n in names]
    k = min(k, len(x))
    if k == 2 and len(x) <= EXACT_UP_TO:
        labels = _best_split(x)
    else:
        fits = [_lloyd(x, _farthest_starts(x, first, k)) for first in range(len(x))]
        labels = min(fits, key=lambda lab: _within(x, lab, k))
    level = {c: _mean([_mean(x[i]) for i in range(len(x)) if labels[i] == c]) for c in set(labels)}
    order = {c: rank for rank, c in enumerate(sorted(level, key=lambda c: -level[c]))}
    return {n: order[labels[i]] for i, n in enumerate(names)}


EXACT_UP_TO = 12
"""`cluster_curves` tries every split into two clusters up to this many curves (2^11 splits)."""


def _best_split(x: list[list[float]]) -> list[int]:
    """The two-way split of x (both parts non-empty) with the smallest within-part sum of squares."""
    n = len(x)
    if n == 1:
        return [0]
    best: tuple[float, list[int]] | None = None
    for bits in range(1, 2 ** (n - 1)):  # curve n-1 always in part 0: each split once
        labels = [(bits >> i) & 1 for i in range(n - 1)] + [0]
        sse = _within(x, labels, 2)
        if best is None or sse < best[0]:
            best = (sse, labels)
    assert best is not None
    return best[1]


def _sq(a: Sequence[float], b: Sequence[float]) -> float:
    return sum((p - q) ** 2 for p, q in zip(a, b))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _farthest_starts(x: list[list[float]], first: int, k: int) -> list[list[float]]:
    centres = [x[first]]
    while len(centres) < k:
        centres.append(max(x, key=lambda p: min(_sq(p, c) for c in centres)))
    return centres


def _lloyd(x: list[list[float]], centres: list[list[float]], iterations: int = 100) -> list[int]:
    labels: list[int] = []
    for _ in range(iterations):
        new = [min(range(len(centres)), key=lambda c: _sq(p, centres[c])) for p in x]
        if new == labels:
            break
        labels = new
        for c in range(len(centres)):
            members = [p for p, l in zip(x, labels) if l == c]
            if members:
                centres[c] = _centre(members)
    return labels


def _centre(members: list[list[float]]) -> list[float]:
    return [_mean(col) for col in zip(*members)]


def _within(x: list[list[float]], labels: list[int], k: int) -> float:
    total = 0.0
    for c in range(k):
        members = [p for p, l in zip(x, labels) if l == c]
        if members:
            centre = _centre(members)
            total += sum(_sq(p, centre) for p in members)
    return total
