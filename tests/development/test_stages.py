"""Stage boundaries on synthetic curves whose transitions are known: a sigmoid step, a plateau then
a drop, a rise then a fall, and the same with noise."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from toylens.development.stages import cluster_curves, critical_points, log_step, smooth, stage_boundaries

# Log-spaced steps 0..10,000 (like toylens' log checkpoints): 41 points.
STEPS = sorted({0, *[round(10 ** (4 * k / 40)) for k in range(41)]})


def sigmoid(step: float, centre: float, width: float = 0.08) -> float:
    """A step in log10(1 + step) centred at `centre` (steps), `width` decades wide."""
    return 1 / (1 + math.exp(-(math.log10(1 + step) - math.log10(1 + centre)) / width))


def nearest(steps: list[int], target: float) -> int:
    return min(range(len(steps)), key=lambda i: abs(math.log10(1 + steps[i]) - math.log10(1 + target)))


def names(steps):
    return [f"c{i}" for i in range(len(steps))]


def test_smoothing_is_a_normalised_gaussian_average_in_log_step():
    values = [float(i % 3) for i in range(len(STEPS))]
    s = smooth(STEPS, values, 0.2)
    u = log_step(STEPS)
    i = 20
    w = [math.exp(-((u[i] - v) ** 2) / (2 * 0.2**2)) for v in u]
    assert s[i] == pytest.approx(sum(a * b for a, b in zip(w, values)) / sum(w), rel=1e-12)
    assert smooth(STEPS, [2.5] * len(STEPS)) == pytest.approx([2.5] * len(STEPS))  # constants stay
    assert smooth(STEPS, values, 0.0) == values


def test_sigmoid_step_has_its_fastest_rise_at_the_centre_and_plateaus_either_side():
    values = [sigmoid(s, 1000) for s in STEPS]
    bounds = stage_boundaries("acc", names(STEPS), STEPS, values)
    kinds = [b.kind for b in bounds]
    assert kinds.count("fastest rise") == 1 and not {"peak", "trough", "fastest drop"} & set(kinds)
    rise = next(b for b in bounds if b.kind == "fastest rise")
    assert abs(rise.index - nearest(STEPS, 1000)) <= 1
    end = [b for b in bounds if b.kind == "plateau end"]
    start = [b for b in bounds if b.kind == "plateau start"]
    assert end and end[0].step < 1000 and start and start[-1].step > 1000  # flat before, flat after


def test_plateau_then_drop_marks_the_end_of_the_plateau_and_the_drop():
    values = [4.0 - 3.0 * sigmoid(s, 300, 0.05) for s in STEPS]
    bounds = stage_boundaries("loss", names(STEPS), STEPS, values)
    drop = [b for b in bounds if b.kind == "fastest drop"]
    assert len(drop) == 1 and abs(drop[0].index - nearest(STEPS, 300)) <= 1
    plateau_end = [b for b in bounds if b.kind == "plateau end"]
    assert plateau_end and plateau_end[0].step < 300 and plateau_end[0].step > 20


def test_a_rise_then_a_fall_has_one_peak_between_them():
    values = [sigmoid(s, 100) - 0.6 * sigmoid(s, 3000) for s in STEPS]
    points = critical_points(STEPS, values)
    peaks = [i for i, k in points if k == "peak"]
    assert len(peaks) == 1 and STEPS[peaks[0]] > 100 and STEPS[peaks[0]] < 3000
    assert [k for _, k in points if k.startswith("fastest")] == ["fastest rise", "fastest drop"]


def test_noise_is_smoothed_away_but_the_step_is_still_found():
    rng = random.Random(0)
    values = [sigmoid(s, 1000) + rng.gauss(0, 0.04) for s in STEPS]
    bounds = stage_boundaries("noisy", names(STEPS), STEPS, values)
    rises = [b for b in bounds if b.kind == "fastest rise"]
    assert len(rises) == 1 and abs(rises[0].index - nearest(STEPS, 1000)) <= 1
    assert not [b for b in bounds if b.kind in ("peak", "trough")]  # no wiggle counts as a turn
    # Unsmoothed, the same noise makes spurious turns: the smoothing is what removes them.
    raw = critical_points(STEPS, values, bandwidth=0.0)
    assert [k for _, k in raw if k in ("peak", "trough")]


def test_flat_or_short_curves_have_no_boundaries_and_bad_input_is_refused():
    assert critical_points(STEPS, [1.0] * len(STEPS)) == []
    assert critical_points([0, 10], [0.0, 1.0]) == []
    with pytest.raises(ValueError, match="increase"):
        critical_points([0, 5, 5], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="values"):
        critical_points([0, 5], [0.0])


def test_clusters_are_the_best_two_way_partition_of_the_curves():
    """Against brute force: every split of 8 random curves into two non-empty groups, the one with
    the smallest within-group sum of squares (float64 numpy)."""
    rng = np.random.default_rng(0)
    for trial in range(25):
        data = np.exp(rng.normal(size=(8, 5)) + rng.integers(0, 2, size=(8, 1)) * rng.uniform(0, 3))
        curves = {f"h{i}": list(row) for i, row in enumerate(data)}
        got = cluster_curves(curves)
        vals = data

        def sse(mask: np.ndarray, vals: np.ndarray = vals) -> float:
            return sum(float(((g - g.mean(0)) ** 2).sum()) for g in (vals[mask], vals[~mask]) if len(g))

        best = min(sse(np.array(bits, dtype=bool)) for bits in itertools.product([0, 1], repeat=8) if 0 < sum(bits) < 8)
        mask = np.array([got[f"h{i}"] == 0 for i in range(8)])
        assert sse(mask) == pytest.approx(best, rel=1e-9), trial
        assert vals[mask].mean() > vals[~mask].mean()  # cluster 0 is the higher one


def test_clusters_of_two_head_types_and_small_cases():
    rising = {f"l1h{h}": [0.1, 0.2, 1.5 + 0.1 * h, 1.6] for h in range(4)}
    flat = {f"l0h{h}": [0.1, 0.12, 0.15 + 0.01 * h, 0.15] for h in range(4)}
    assert cluster_curves({**flat, **rising}) == {**dict.fromkeys(rising, 0), **dict.fromkeys(flat, 1)}
    assert cluster_curves({"a": [1.0, -2.0]}) == {"a": 0}  # one curve, one cluster
    assert cluster_curves({}) == {}
    with pytest.raises(ValueError, match="same length"):
        cluster_curves({"a": [1.0], "b": [1.0, 2.0]})


def test_many_curves_or_clusters_use_lloyd_from_farthest_starts():
    groups = [0.1, 1.0, 10.0]
    curves = {f"g{g}c{i}": [level * (1 + 0.01 * i), level * 1.1] for g, level in enumerate(groups) for i in range(7)}
    got = cluster_curves(curves, k=3)  # 21 curves, 3 clusters: not the exact two-way search
    assert {n: got[n] for n in curves} == {n: 2 - int(n[1]) for n in curves}
    two = cluster_curves(curves, k=2)  # 21 > EXACT_UP_TO: Lloyd; the highest group alone or with the middle one
    assert len(set(two.values())) == 2 and all(two[n] == 0 for n in curves if n.startswith("g2"))
