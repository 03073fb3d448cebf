"""The development stage of a run: essential dynamics over every checkpoint, then its stages.

    import toylens
    ed, stages = toylens.development("runs/induction-2l")   # -> RUN/development/

or `toylens development RUN` (a step of `toylens reproduce` where a study lists it). It reads the
run's checkpoints and what `toylens llc` saved (RUN/llc/all/), and writes two run-level results
(not per checkpoint, unlike `analyze`'s) under RUN/development/:

    essential_dynamics   an `EssentialDynamics`: the PCA of the log-probs on a fixed probe set at
                         every checkpoint, and the probe loss (`development.essential_dynamics`)
    stages               a `Stages`: the stage boundaries (`development.stages`) of the probe loss
                         and of the whole-model LLC curve (when `toylens llc` has run), with the
                         smoothing stated; recomputed on every call (cheap, and the LLC may have grown)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from toylens.development.essential_dynamics import ED_PATH, N_PROBE, EssentialDynamics, essential_dynamics
from toylens.development.stages import BANDWIDTH, SMOOTHING, smooth, stage_boundaries
from toylens.device import DeviceLike
from toylens.llc import WHOLE, read_estimates
from toylens.rundir import RunDir, RunLike, as_rundir, run_lock
from toylens.rundir.results import Result, has_result

STAGES_PATH = "development/stages"
LOSS_CURVE = "probe loss"
LLC_CURVE = "llc"


@dataclass
class Stages(Result):
    """Stage boundaries of a run's curves over training."""

    smoothing: str
    bandwidth: float
    curves: dict[str, dict[str, list[Any]]]
    """{curve: {"checkpoints", "steps", "values", "smoothed"}}."""
    boundaries: list[dict[str, Any]]
    """`Boundary.to_dict()` of every curve's boundaries, in step order."""


def curves(run: RunDir) -> dict[str, tuple[list[str], list[int], list[float]]]:
    """The curves stages are read from: {name: (checkpoints, steps, values)}, steps increasing."""
    out: dict[str, tuple[list[str], list[int], list[float]]] = {}
    if has_result(run, ED_PATH):
        ed = EssentialDynamics.load(run, ED_PATH)
        out[LOSS_CURVE] = _increasing(ed.checkpoints, ed.steps, ed.loss.tolist())
    estimates = read_estimates(run, WHOLE).get(WHOLE, [])
    llc = [e for e in estimates if isinstance(e.get("llc"), (int, float)) and math.isfinite(e["llc"])]
    if llc:
        out[LLC_CURVE] = _increasing([e["checkpoint"] for e in llc], [e["step"] for e in llc], [e["llc"] for e in llc])
    return out


def _increasing(names: list[str], steps: list[int], values: list[float]) -> tuple[list[str], list[int], list[float]]:
    """Points in step order, one per step (the first checkpoint of a step: the same weights)."""
    seen: dict[int, tuple[str, float]] = {}
    for n, s, v in zip(names, steps, values):
        seen.setdefault(s, (n, v))
    order = sorted(seen)
    return [seen[s][0] for s in order], order, [seen[s][1] for s in order]


def stages(run: RunDir, *, bandwidth: float = BANDWIDTH) -> Stages:
    """The stage boundaries of the run's probe loss and LLC curves, saved at RUN/development/stages."""
    found: dict[str, dict[str, list[Any]]] = {}
    bounds: list[dict[str, Any]] = []
    for name, (names, steps, values) in curves(run).items():
        found[name] = {
            "checkpoints": names,
            "steps": steps,
            "values": values,
            "smoothed": smooth(steps, values, bandwidth),
        }
        bounds += [b.to_dict() for b in stage_boundaries(name, names, steps, values, bandwidth=bandwidth)]
    bounds.sort(key=lambda b: (b["step"], b["curve"]))
    result = Stages(SMOOTHING.format(h=bandwidth), bandwidth, found, bounds)
    result.save(run, STAGES_PATH)
    return result


def development(
    run: RunLike, *, n_probe: int = N_PROBE, seed: int = 0, bandwidth: float = BANDWIDTH, device: DeviceLike = "auto"
) -> tuple[EssentialDynamics, Stages]:
    """Essential dynamics, then stages, of a run (module docstring)."""
    run = as_rundir(run)
    with run_lock(run.path, "development"):
        ed = essential_dynamics(run, n_probe=n_probe, seed=seed, device=device)
        return ed, stages(run, bandwidth=bandwidth)
