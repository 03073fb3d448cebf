"""Calibration: pick the SGLD step size ε and localisation γ, for the whole model or per restriction.

    import toylens
    toylens.calibrate_llc("runs/sort-no-decay")                     # the whole model, on "final"
    toylens.calibrate_llc("runs/induction-2l", restrict="heads")    # one pick per head

or `toylens llc calibrate RUN [--restrict ...]`. Every restriction x (ε, γ) of the grid is sampled
on one checkpoint in one batched computation; each restriction gets the pick of `choose`. A
restriction's own nβ (from its spec) is kept; ε and γ are what the sweep varies. With `write`, the
sweeps and picks go to RUN/llc/calibration.json (+ .safetensors traces, see `store`); the whole
model's pick (`all`) becomes the run's settings (RUN/llc/settings.json), which every estimate starts
from, and every other restriction's pick is used by `llc_over_checkpoints` for that restriction
unless its spec states its own ε or γ. A restriction without a usable setting keeps the run's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from toylens.llc import store
from toylens.llc.diagnostics import LLCEstimate
from toylens.llc.driver import Specs, as_specs, center_weights, named
from toylens.llc.estimator import estimate_many
from toylens.llc.objective import run_objective
from toylens.llc.restrict import restrictions
from toylens.llc.settings import LLCSettings
from toylens.memory import reuse_freed_memory
from toylens.rundir import CheckpointInfo, RunDir, RunLike, Spec, as_rundir, load, resolve_one, run_lock

log = logging.getLogger("toylens")

DEFAULT_EPSILONS = (1e-4, 3e-4, 1e-3, 3e-3)
DEFAULT_GAMMAS = (300.0, 1000.0)
PLATEAU = 0.1  # λ̂ may move this much between neighbouring step sizes in the chosen range
# Flags that rule a setting out; "high_acceptance" only says the step could be larger.
DISQUALIFYING = {"nonfinite", "negative", "low_acceptance", "drift", "below_init", "not_converged"}


@dataclass
class Calibration:
    """One restriction's sweep on one checkpoint: its estimates in grid order (γ-major) and the
    index of the pick (None: no setting was usable)."""

    checkpoint: str
    estimates: list[LLCEstimate]
    chosen: int | None

    def rows(self) -> list[dict[str, Any]]:
        return [dict(e.summary(), usable=usable(e)) for e in self.estimates]

    @property
    def pick(self) -> LLCEstimate | None:
        return None if self.chosen is None else self.estimates[self.chosen]


def calibrate(
    run: RunLike,
    checkpoint: Spec = "final",
    *,
    restrict: Specs = store.WHOLE,
    data: str | None = None,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    settings: LLCSettings | None = None,
    device: str | torch.device = "auto",
    write: bool = True,
    progress: bool = True,
) -> dict[str, Calibration]:
    """Sweep ε x γ on one checkpoint (final, best, 3, epoch-0003; not all or a list) for every
    restriction `restrict` expands (default: the whole model, `all`), all sampled together, and pick
    per restriction (`choose`). `data` as in `llc_over_checkpoints`. With `write`, store the sweeps
    and picks (see the module docstring). Returns {restriction name: Calibration}."""
    reuse_freed_memory()
    run = as_rundir(run)
    with run_lock(run.path, "llc calibrate"):
        store.check_layout(run)
        base = settings or store.load_settings(run)
        ckpt = resolve_one(run, checkpoint, "llc calibrate")
        sweeps = _sweep(run, ckpt, as_specs(restrict), data, epsilons, gammas, base, device, progress)
        out = {name: Calibration(ckpt.name, part, choose(part)) for name, part in sweeps.items()}
        if write:
            _write(run, out, base)
        return out


def _sweep(
    run: RunDir,
    ckpt: CheckpointInfo,
    specs: list[Any],
    data: str | None,
    epsilons: Sequence[float],
    gammas: Sequence[float],
    base: LLCSettings,
    device: str | torch.device,
    progress: bool,
) -> dict[str, list[LLCEstimate]]:
    """Every (ε, γ) of epsilons x gammas for each restriction, in one batched computation:
    {name: estimates in grid order, γ-major}."""
    loaded = load(run, ckpt.name, device=device)
    rs = named(restrictions(loaded.model, specs), data)
    objective = run_objective(loaded.model, loaded.config, loaded.task, base, data)
    grid = [(float(e), float(g)) for g in gammas for e in epsilons]
    estimates = estimate_many(
        objective,
        [center_weights(run, ckpt, objective)],
        base,
        grid=grid,
        restrict=rs,
        labels=[f"{r.name} ε={e:g} γ={g:g}" for r in rs for e, g in grid],
        progress=progress,
    )
    return {r.name: estimates[i * len(grid) : (i + 1) * len(grid)] for i, r in enumerate(rs)}


def _write(run: RunDir, out: dict[str, Calibration], base: LLCSettings) -> None:
    """Merge the sweeps into RUN/llc/calibration.json (+ traces); the whole model's pick, if any,
    into RUN/llc/settings.json."""
    stored = store.read_calibrations(run)
    for name, cal in out.items():
        stored[name] = {"checkpoint": cal.checkpoint, "grid": cal.rows(), "chosen": cal.chosen}
        if cal.pick is None:
            log.warning(
                "%s: %s: no (ε, γ) in the calibration grid gave healthy, converged traces; its estimates "
                "keep ε=%g γ=%g: widen the grid or raise draws",
                run.path,
                name,
                base.epsilon,
                base.gamma,
            )
    traces = {
        f"{name}.{kind}.{j}": t
        for name, cal in out.items()
        for j, e in enumerate(cal.estimates)
        for kind, t in e.traces().items()
    }
    run.write_tensors(store.CALIBRATION_TRACES, traces, {"format": store.FORMAT})
    run.write_json(store.CALIBRATION, {"format": store.FORMAT, "restrictions": stored})
    whole = out.get(store.WHOLE)
    if whole is not None and whole.pick is not None:
        chosen = base.model_copy(update={"epsilon": whole.pick.epsilon, "gamma": whole.pick.gamma})
        run.write_json(store.SETTINGS, chosen.model_dump(mode="json"))


def usable(est: LLCEstimate) -> bool:
    return not DISQUALIFYING & set(est.flags)


def choose(estimates: Sequence[LLCEstimate], plateau: float = PLATEAU) -> int | None:
    """The pick of a calibration sweep (None if no setting is usable).

    At the smallest γ with a usable setting: the largest usable ε whose λ̂ is within `plateau` of
    the λ̂ at the next smaller usable ε (a larger step mixes faster, until the step-size error
    starts to move λ̂); failing that, the smallest usable ε.
    """
    ok = [i for i, e in enumerate(estimates) if usable(e)]
    if not ok:
        return None
    gamma = min(estimates[i].gamma for i in ok)
    steps = sorted((i for i in ok if estimates[i].gamma == gamma), key=lambda i: estimates[i].epsilon)
    best = steps[0]
    for smaller, larger in zip(steps, steps[1:]):
        before, after = estimates[smaller].llc, estimates[larger].llc
        if abs(after - before) <= plateau * abs(before):
            best = larger
    return best
