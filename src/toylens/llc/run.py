"""The LLC of every checkpoint of a run, calibration of the sampler, and the files they leave.

    from toylens.llc import calibrate, estimate_loaded, llc_over_checkpoints
    cal = calibrate("runs/sort-no-decay")                  # sweeps epsilon x gamma on "final"
    results = llc_over_checkpoints("runs/sort-no-decay")   # {checkpoint: summary dict}
    est = estimate_loaded(toylens.load("runs/sort-no-decay", 3))   # one checkpoint, in memory

or `toylens llc calibrate RUN` then `toylens llc RUN`. The sampled objective is the run's own
training objective on its training split (`objective.run_objective`): the task loss plus (by
default) its L1 activation penalty (`train.l1`). The weight decay can be added as (c/2)·||w||²
on the parameters the run decays (`--set weight_decay=null` takes c = `train.weight_decay`); it
is off by default because that term gives every decayed weight curvature nβ·c, which swamps λ̂
(on sort-high-decay: λ̂ ≈ 920 with it, 7.9 without), while without it the localised chains show
no drift below L(w*).

Files, all under RUN/llc/ and written atomically through `RunDir` (checksummed in the run's
manifest); a report reads only these:

    settings.json             LLCSettings used by estimates of this run (written by calibrate)
    calibration.json          {"checkpoint", "grid": [summary + "epsilon", "gamma", "usable"], "chosen"}
    calibration.safetensors   traces of the sweep: "loss.<i>" [chains, steps], "accept.<i>"
    <checkpoint>.json         one estimate (e.g. epoch-0003.json): "checkpoint", "epoch", "step",
                              "llc" (λ̂, mean over chains), "llc_std" (across chains), "llc_se"
                              (standard error), "llc_chains", "llc_half" (first half of the draws),
                              "rel_change", "converged", "init_loss" (objective at w*),
                              "train_loss" (task loss at w*), "nbeta", "epsilon", "gamma",
                              "acceptance" (MALA), "frac_below_init", "drift", "warnings",
                              "flags", "settings" (every hyperparameter), "wall_s"
    <checkpoint>.safetensors  "loss" [chains, steps]: minibatch objective at every SGLD step,
                              burn-in included (draws are steps burnin, burnin+thin, ...);
                              "accept" [chains, checks]: MALA acceptance every mala_every steps

    restricted/<restriction>/<checkpoint>.json (+ .safetensors)
                              the refined LLC with only a part of the weights sampled
                              (`restricted_llc`, `toylens llc RUN --restrict ...`): the same keys
                              plus "restriction" and "params" {parameter: weights sampled}

A checkpoint whose <checkpoint>.json exists with the same settings is skipped; its traces are
written before its summary, so an interrupted run leaves no summary without traces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from toylens.checkpoints import CheckpointInfo, Spec, resolve, resolve_one
from toylens.config import RunConfig
from toylens.errors import ToylensError
from toylens.llc.diagnostics import LLCEstimate
from toylens.llc.estimator import estimate_many
from toylens.llc.objective import Objective, run_objective, sampled_weight_decay
from toylens.llc.restrict import Restriction, restrictions
from toylens.llc.settings import LLCSettings, resolve_nbeta
from toylens.lock import run_lock
from toylens.memory import reuse_freed_memory
from toylens.run import Loaded, RunDir, RunLike, as_rundir, load

log = logging.getLogger("toylens")

FORMAT = "toylens-llc/1"
DEFAULT_EPSILONS = (1e-4, 3e-4, 1e-3, 3e-3)
DEFAULT_GAMMAS = (300.0, 1000.0)
# Flags that rule a setting out in calibration; "high_acceptance" only says the step could be larger.
PLATEAU = 0.1  # λ̂ may move this much between neighbouring step sizes in the chosen range
DISQUALIFYING = {"nonfinite", "negative", "low_acceptance", "drift", "below_init", "not_converged"}


def estimate_loaded(loaded: Loaded, settings: LLCSettings | None = None, *, progress: bool = False) -> LLCEstimate:
    """The LLC of one loaded checkpoint (`toylens.load(run, checkpoint)`), nothing written."""
    settings = settings or (load_settings(loaded.run) if loaded.run is not None else LLCSettings())
    objective = run_objective(loaded.model, loaded.config, loaded.task, settings)
    center = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    est = estimate_many(objective, [center], settings, progress=progress)[0]
    est.settings = _resolved(settings, objective, loaded.config)
    return est


def load_settings(run: RunDir, overrides: dict[str, Any] | None = None) -> LLCSettings:
    """Defaults, then RUN/llc/settings.json (from calibration) if present, then `overrides`."""
    raw: dict[str, Any] = run.read_json("llc/settings.json") if run.has("llc/settings.json") else {}
    raw.update(overrides or {})
    return validate_settings(raw, str(run.path / "llc/settings.json"))


def validate_settings(raw: dict[str, Any], where: str) -> LLCSettings:
    from toylens.config import validate_input

    return validate_input(LLCSettings, raw, where)


def llc_over_checkpoints(
    run: RunLike,
    checkpoint: Spec = "all",
    *,
    settings: LLCSettings | None = None,
    device: str | torch.device = "auto",
    group: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Estimate the LLC of each checkpoint `checkpoint` names (any spec of `toylens.checkpoints`:
    all, final, best, 3, epoch-0003, "3,5"), skipping those done, `group` checkpoints at a time.

    Returns {checkpoint name: summary} for every selected checkpoint (done earlier or now).
    `device` "auto" is cuda when available, else cpu. Tunes the process's malloc for speed (see
    `toylens.memory.reuse_freed_memory`).
    """
    reuse_freed_memory()
    run = as_rundir(run)
    with run_lock(run.path, "llc"):
        settings = settings or load_settings(run)
        chosen = resolve(run, checkpoint)
        if not chosen:
            return {}
        loaded = load(run.path, chosen[0].name, device=device)
        objective = run_objective(loaded.model, loaded.config, loaded.task, settings)
        key = _resolved(settings, objective, loaded.config)
        results, todo = {}, []
        for ckpt in chosen:
            done = run.read_json(f"llc/{ckpt.name}.json") if run.has(f"llc/{ckpt.name}.json") else None
            if done is not None and done.get("settings") == key:
                results[ckpt.name] = done
            else:
                todo.append(ckpt)
        bar = tqdm(
            total=len(chosen),
            initial=len(results),
            desc=f"llc {run.path.name}",
            unit="ckpt",
            disable=not progress,
            dynamic_ncols=True,
        )
        with bar:
            for start in range(0, len(todo), group):
                part = todo[start : start + group]
                centers = [_weights(run, c, objective) for c in part]
                labels = [f"{run.path.name}/{c.name}" for c in part]
                estimates = estimate_many(objective, centers, settings, labels=labels, progress=progress)
                for ckpt, est in zip(part, estimates):
                    est.settings = key
                    results[ckpt.name] = _write_estimate(run, ckpt, est)
                    bar.update()
        return {c.name: results[c.name] for c in chosen}


def restricted_llc(
    run: RunLike,
    restrict: Sequence[str | Restriction],
    checkpoint: Spec = "all",
    *,
    settings: LLCSettings | None = None,
    data: str | None = None,
    device: str | torch.device = "auto",
    group: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """The refined LLC: for every restriction `restrict` expands (all, heads, layers, embed,
    unembed, l0h1, parameter-name globs; see `restrict.restrictions`) and every checkpoint, the LLC
    with only the restricted weights sampled, the rest frozen at the checkpoint's. All restrictions
    x `group` checkpoints x chains advance as one batched computation; done ones are skipped.

    With `data` (one of the task's `data_restrictions()`: induction copied/uncopied, sort
    output<i>, lm punctuation/other), the sampled loss is the task loss on that subset of the
    targets only (see `run_objective`), and each restriction is stored as "<restriction>@<data>".

    Results go to RUN/llc/restricted/<name>/<checkpoint>.json (+ .safetensors), with the
    whole-model keys plus "restriction", "data" (None or the subset) and "params" ({parameter:
    weights sampled}). Returns {name: {checkpoint name: summary}}.
    """
    reuse_freed_memory()
    run = as_rundir(run)
    with run_lock(run.path, "llc"):
        settings = settings or load_settings(run)
        chosen = resolve(run, checkpoint)
        loaded = load(run.path, chosen[0].name if chosen else "final", device=device)
        rs = _data_named(restrictions(loaded.model, restrict), data)
        rs = _calibrated(run, rs)
        objective = run_objective(loaded.model, loaded.config, loaded.task, settings, data)
        if not chosen:
            return {r.name: {} for r in rs}
        base = dict(_resolved(settings, objective, loaded.config), **({"data": data} if data else {}))
        keys = {r.name: _restricted_key(base, r) for r in rs}
        results: dict[str, dict[str, dict[str, Any]]] = {r.name: {} for r in rs}
        todo: dict[str, list[Restriction]] = {}  # checkpoint -> its restrictions still to do
        for ckpt in chosen:
            for r in rs:
                path = f"llc/restricted/{r.name}/{ckpt.name}.json"
                done = run.read_json(path) if run.has(path) else None
                if done is not None and done.get("settings") == keys[r.name]:
                    results[r.name][ckpt.name] = done
                else:
                    todo.setdefault(ckpt.name, []).append(r)
        # Checkpoints that miss the same restrictions are sampled together (all of them, usually).
        batches: dict[tuple[str, ...], list[CheckpointInfo]] = {}
        for ckpt in chosen:
            if ckpt.name in todo:
                batches.setdefault(tuple(r.name for r in todo[ckpt.name]), []).append(ckpt)
        by_name = {r.name: r for r in rs}
        total = len(chosen) * len(rs)
        done_n = sum(len(v) for v in results.values())
        bar = tqdm(
            total=total, initial=done_n, desc=f"llc {run.path.name} restricted", unit="est", disable=not progress
        )
        with bar:
            for names, ckpts in batches.items():
                part_rs = [by_name[n] for n in names]
                for start in range(0, len(ckpts), group):
                    part = ckpts[start : start + group]
                    centers = [_weights(run, c, objective) for c in part]
                    labels = [f"{run.path.name}/{c.name}/{r.name}" for c in part for r in part_rs]
                    estimates = estimate_many(
                        objective, centers, settings, labels=labels, restrict=part_rs, progress=progress
                    )
                    pairs = [(c, r) for c in part for r in part_rs]
                    for (ckpt, r), est in zip(pairs, estimates):
                        est.settings = keys[r.name]
                        extra = {"restriction": r.name, "data": data, "params": r.describe()}
                        results[r.name][ckpt.name] = _write_estimate(run, ckpt, est, f"restricted/{r.name}/", extra)
                        bar.update()
        return {r.name: {c.name: results[r.name][c.name] for c in chosen} for r in rs}


def _restricted_key(base: dict[str, Any], r: Restriction) -> dict[str, Any]:
    """The stored settings of a restricted estimate: its own ε, nβ and γ, and what it samples."""
    key = dict(base, restriction=r.describe())
    if r.nbeta is not None:
        key["nbeta"] = r.nbeta
    if r.gamma is not None:
        key["gamma"] = r.gamma
    if r.epsilon is not None:
        key["epsilon"] = r.epsilon
    return key


RESTRICTED_CALIBRATION = "llc/restricted/calibration.json"


def _data_named(rs: list[Restriction], data: str | None) -> list[Restriction]:
    """With a data restriction, each restriction stored as "<restriction>@<data>"."""
    return rs if data is None else [replace(r, name=f"{r.name}@{data}") for r in rs]


def _calibrated(run: RunDir, rs: list[Restriction]) -> list[Restriction]:
    """The restrictions with the ε and γ that `calibrate_restricted` picked for them (stored in
    RUN/llc/restricted/calibration.json), where their spec states none; the others unchanged."""
    if not run.has(RESTRICTED_CALIBRATION):
        return rs
    picks = run.read_json(RESTRICTED_CALIBRATION)["restrictions"]
    out = []
    for r in rs:
        pick = (picks.get(r.name) or {}).get("chosen")
        if pick is not None and r.epsilon is None and r.gamma is None:
            r = replace(r, epsilon=pick["epsilon"], gamma=pick["gamma"])
        out.append(r)
    return out


def calibrate_restricted(
    run: RunLike,
    restrict: Sequence[str | Restriction],
    checkpoint: Spec = "final",
    *,
    data: str | None = None,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    settings: LLCSettings | None = None,
    device: str | torch.device = "auto",
    write: bool = True,
    progress: bool = True,
) -> dict[str, Calibration]:
    """`calibrate` per restriction: every restriction x (ε, γ) of the grid on one checkpoint, all
    sampled together, and a pick per restriction by the whole-model rule (`choose`). A restriction's
    own nβ (from its spec) is kept; its own ε and γ are what the sweep varies. With `write`, the
    sweeps and picks go to RUN/llc/restricted/calibration.json (+ .safetensors traces), and
    `restricted_llc` uses each restriction's pick from then on (a restriction without a usable
    setting keeps the whole-model ε and γ, with a warning). `data` as in `restricted_llc`.
    Returns {restriction name: Calibration}."""
    reuse_freed_memory()
    run = as_rundir(run)
    with run_lock(run.path, "llc calibrate"):
        ckpt, base, sweeps = _sweep(run, checkpoint, restrict, data, epsilons, gammas, settings, device, progress)
        out = {name: Calibration(ckpt.name, part, choose(part)) for name, part in sweeps.items()}
        if write:
            stored = (
                dict(run.read_json(RESTRICTED_CALIBRATION)["restrictions"]) if run.has(RESTRICTED_CALIBRATION) else {}
            )
            for name, cal in out.items():
                pick = None if cal.chosen is None else cal.estimates[cal.chosen]
                chosen = None if pick is None else {"epsilon": pick.epsilon, "gamma": pick.gamma}
                stored[name] = {"checkpoint": ckpt.name, "grid": cal.rows(), "chosen": chosen}
                if pick is None:
                    log.warning(
                        "%s: %s: no (ε, γ) in the calibration grid gave healthy, converged traces; its "
                        "estimates keep ε=%g γ=%g: widen the grid or raise draws",
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
            run.write_tensors("llc/restricted/calibration.safetensors", traces, {"format": FORMAT})
            run.write_json(RESTRICTED_CALIBRATION, {"format": FORMAT, "restrictions": stored})
        return out


def read_restricted(run: RunLike) -> dict[str, list[dict[str, Any]]]:
    """Every stored restricted summary of a run: {restriction: [summary per checkpoint, in training order]}."""
    run = as_rundir(run)
    root = run.path / "llc" / "restricted"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    ckpts = run.checkpoints()
    return {
        n: [
            run.read_json(f"llc/restricted/{n}/{c.name}.json")
            for c in ckpts
            if run.has(f"llc/restricted/{n}/{c.name}.json")
        ]
        for n in names
    }


@dataclass
class Calibration:
    checkpoint: str
    estimates: list[LLCEstimate]
    chosen: int | None

    def rows(self) -> list[dict[str, Any]]:
        return [dict(e.summary(), usable=usable(e)) for e in self.estimates]


def calibrate(
    run: RunLike,
    checkpoint: Spec = "final",
    *,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    settings: LLCSettings | None = None,
    device: str | torch.device = "auto",
    write: bool = True,
    progress: bool = True,
) -> Calibration:
    """Sweep epsilon x gamma on one checkpoint (all settings sampled together) and pick one.
    `checkpoint` names one checkpoint (final, best, 3, epoch-0003; not all or a list).

    Usable settings have finite, flat, converged traces, λ̂ > 0 and MALA acceptance not near 0;
    the pick is the largest usable epsilon that still agrees with the next smaller one (see
    `choose`), at the smallest gamma that has a usable setting. With `write`,
    the sweep goes to RUN/llc/calibration.* and the pick to RUN/llc/settings.json.
    """
    reuse_freed_memory()
    run = as_rundir(run)
    with run_lock(run.path, "llc calibrate"):
        ckpt, base, sweeps = _sweep(run, checkpoint, None, None, epsilons, gammas, settings, device, progress)
        estimates = sweeps[WHOLE]
        chosen = choose(estimates)
        cal = Calibration(ckpt.name, estimates, chosen)
        if write:
            traces = {f"{kind}.{i}": t for i, e in enumerate(estimates) for kind, t in e.traces().items()}
            run.write_tensors("llc/calibration.safetensors", traces, {"format": FORMAT})
            run.write_json(
                "llc/calibration.json",
                {"format": FORMAT, "checkpoint": ckpt.name, "grid": cal.rows(), "chosen": chosen},
            )
            if chosen is None:
                log.warning(
                    "%s: no (ε, γ) in the calibration grid gave healthy, converged traces; estimates keep "
                    "ε=%g γ=%g: widen the grid or raise draws",
                    run.path,
                    base.epsilon,
                    base.gamma,
                )
            else:
                pick = estimates[chosen]
                new = base.model_copy(update={"epsilon": pick.epsilon, "gamma": pick.gamma})
                run.write_json("llc/settings.json", new.model_dump(mode="json"))
        return cal


WHOLE = ""  # `_sweep`'s name for the whole model


def _sweep(
    run: RunDir,
    checkpoint: Spec,
    restrict: Sequence[str | Restriction] | None,
    data: str | None,
    epsilons: Sequence[float],
    gammas: Sequence[float],
    settings: LLCSettings | None,
    device: str | torch.device,
    progress: bool,
) -> tuple[CheckpointInfo, LLCSettings, dict[str, list[LLCEstimate]]]:
    """The calibrations' sampling: every (ε, γ) of epsilons x gammas on one checkpoint, for the
    whole model (`restrict` None, named WHOLE) or each restriction, all in one batched computation.
    Returns (the checkpoint, the base settings, {name: estimates in grid order, γ-major})."""
    base = settings or load_settings(run)
    ckpt = resolve_one(run, checkpoint, "llc calibrate")
    loaded = load(run.path, ckpt.name, device=device)
    rs = None if restrict is None else _data_named(restrictions(loaded.model, restrict), data)
    objective = run_objective(loaded.model, loaded.config, loaded.task, base, data)
    grid = [(float(e), float(g)) for g in gammas for e in epsilons]
    names = [WHOLE] if rs is None else [r.name for r in rs]
    estimates = estimate_many(
        objective,
        [_weights(run, ckpt, objective)],
        base,
        grid=grid,
        restrict=rs,
        labels=[f"{n} ε={e:g} γ={g:g}".lstrip() for n in names for e, g in grid],
        progress=progress,
    )
    return ckpt, base, {n: estimates[i * len(grid) : (i + 1) * len(grid)] for i, n in enumerate(names)}


def usable(est: LLCEstimate) -> bool:
    return not DISQUALIFYING & set(est.flags)


def choose(estimates: Sequence[LLCEstimate], plateau: float = PLATEAU) -> int | None:
    """The pick of a calibration sweep (None if no setting is usable).

    At the smallest gamma with a usable setting: the largest usable epsilon whose λ̂ is within
    `plateau` of the λ̂ at the next smaller usable epsilon (a larger step mixes faster, until the
    step-size error starts to move λ̂); failing that, the smallest usable epsilon.
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


def read_llc(run: RunLike) -> list[dict[str, Any]]:
    """Every stored per-checkpoint summary of a run, in training order."""
    run = as_rundir(run)
    return [run.read_json(f"llc/{c.name}.json") for c in run.checkpoints() if run.has(f"llc/{c.name}.json")]


def _weights(run: RunDir, ckpt: CheckpointInfo, objective: Objective) -> dict[str, torch.Tensor]:
    tensors, _ = run.read_tensors(ckpt.file)
    names = [n for n, _ in objective.model.named_parameters()]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ToylensError(f"{run.path / ckpt.file}: weights do not match the run's model (missing {missing[:3]})")
    return {n: tensors[n].to(objective.device) for n in names}


def _resolved(settings: LLCSettings, objective: Objective, cfg: RunConfig) -> dict[str, Any]:
    """The settings as stored with a result: nβ, batch size and weight decay filled in."""
    nbeta, m = resolve_nbeta(settings, objective.n_data)
    wd = sampled_weight_decay(settings, cfg)
    return settings.model_copy(update={"nbeta": nbeta, "batch_size": m, "weight_decay": wd}).model_dump(mode="json")


def _write_estimate(
    run: RunDir, ckpt: CheckpointInfo, est: LLCEstimate, under: str = "", extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    summary = {
        "format": FORMAT,
        "checkpoint": ckpt.name,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        **(extra or {}),
        **est.summary(),
    }
    meta = {"format": FORMAT, "checkpoint": ckpt.name}
    run.write_tensors(f"llc/{under}{ckpt.name}.safetensors", est.traces(), meta)
    run.write_json(f"llc/{under}{ckpt.name}.json", summary)
    return summary
