"""Stage boundaries on synthetic curves whose transitions are known: a sigmoid step, a plateau then
a drop, a rise then a fall, and the same with noise."""

from __future__ import annotations

import math
import random

import pytest

from toylens.analysis.stages import critical_points, log_step, smooth, stage_boundaries

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
