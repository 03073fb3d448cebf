"""The LLC of a run's checkpoints: one driver for the whole model and every restriction.

    import toylens
    toylens.llc_over_checkpoints("runs/sort-no-decay")                  # whole model, every checkpoint
    toylens.llc_over_checkpoints("runs/induction-2l", restrict="heads")  # refined LLC of each head
    toylens.llc_over_checkpoints("runs/induction-2l", data="copied")     # whole model, copied tokens only
    est = estimate_loaded(toylens.load("runs/sort-no-decay", 3))         # one checkpoint, in memory

or `toylens llc RUN [--restrict ...] [--data-restrict ...]`. The whole model is the restriction
`all`; a restriction samples only part of the weights, the rest frozen at the checkpoint's (see
`restrict`). The sampled objective is the run's own training objective on its training split
(`objective.run_objective`): the task loss plus (by default) its L1 activation penalty. The weight
decay can be added as (c/2)·||w||² on the parameters the run decays (`--set weight_decay=null`
takes c = `train.weight_decay`); it is off by default because that term gives every decayed weight
curvature nβ·c, which swamps λ̂ (on sort-high-decay: λ̂ ≈ 920 with it, 7.9 without), while without
it the localised chains show no drift below L(w*).

Every restriction x checkpoint x chain still to do advances in one batched computation (`group`
checkpoints at a time); estimates stored with the same settings are skipped, so a rerun after an
interruption continues. Files: `store`. Step sizes: `calibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from toylens.config import RunConfig
from toylens.errors import ToylensError
from toylens.llc import store
from toylens.llc.diagnostics import LLCEstimate
from toylens.llc.estimator import estimate_many
from toylens.llc.objective import Objective, run_objective, sampled_weight_decay
from toylens.llc.restrict import Restriction, restrictions
from toylens.llc.settings import LLCSettings, resolve_nbeta
from toylens.memory import reuse_freed_memory
from toylens.rundir import (
    CheckpointInfo,
    Loaded,
    RunDir,
    RunLike,
    Spec,
    as_rundir,
    load,
    read_weights,
    resolve,
    run_lock,
)

Specs = str | Restriction | Sequence[str | Restriction]
"""Restrictions as the driver takes them: one spec ("heads", "all", "l1h2:gamma=1000") or a list."""


def llc_over_checkpoints(
    run: RunLike,
    checkpoint: Spec = "all",
    *,
    restrict: Specs = store.WHOLE,
    data: str | None = None,
    settings: LLCSettings | None = None,
    device: str | torch.device = "auto",
    group: int = 16,
    redo: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """The LLC of every restriction `restrict` expands (all: the whole model; heads, layers, embed,
    unembed, l0h1, parameter-name globs: see `restrict.restrictions`) at every checkpoint
    `checkpoint` names (all, final, best, 3, epoch-0003, "3,5"), each restriction with its own ε
    and γ where `calibrate` picked them (the whole model's are the run's settings). With `data`
    (one of the task's `data_restrictions()`: induction copied/uncopied, sort output<i>, lm
    punctuation/other), the sampled loss is the task loss on that subset of the targets only, and
    each restriction is stored as "<restriction>@<data>". `redo` deletes RUN/llc/ first.

    Returns {restriction: {checkpoint name: summary}} for every selected checkpoint (done earlier
    or now); results go to RUN/llc/<restriction>/<checkpoint>.json (see `store`). Tunes the
    process's malloc for speed (`toylens.memory.reuse_freed_memory`).
    """
    reuse_freed_memory()
    run = as_rundir(run)
    with run_lock(run.path, "llc"):
        if redo:
            store.clear(run)
        store.check_layout(run)
        settings = settings or store.load_settings(run)
        chosen = resolve(run, checkpoint)
        loaded = load(run, chosen[0].name if chosen else "final", device=device)
        rs = with_picks(run, named(restrictions(loaded.model, as_specs(restrict)), data))
        objective = run_objective(loaded.model, loaded.config, loaded.task, settings, data)
        base = dict(resolved(settings, objective, loaded.config), **({"data": data} if data else {}))
        keys = {r.name: stored_key(base, r) for r in rs}
        results, todo = _done(run, chosen, rs, keys)
        bar = tqdm(
            total=len(chosen) * len(rs),
            initial=sum(len(v) for v in results.values()),
            desc=f"llc {run.path.name}",
            unit="est",
            disable=not progress,
            dynamic_ncols=True,
        )
        with bar:
            for part_rs, part in _batches(chosen, rs, todo, group):
                centers = [center_weights(run, c, objective) for c in part]
                labels = [f"{run.path.name}/{c.name}/{r.name}" for c in part for r in part_rs]
                estimates = estimate_many(
                    objective, centers, settings, labels=labels, restrict=part_rs, progress=progress
                )
                for (ckpt, r), est in zip([(c, r) for c in part for r in part_rs], estimates):
                    est.settings = keys[r.name]
                    extra = {"restriction": r.name, "data": data, "params": r.describe()}
                    results[r.name][ckpt.name] = store.write_estimate(run, ckpt, est, extra)
                    bar.update()
        return {r.name: {c.name: results[r.name][c.name] for c in chosen} for r in rs}


def _done(
    run: RunDir, chosen: list[CheckpointInfo], rs: list[Restriction], keys: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, list[Restriction]]]:
    """(the estimates already stored with these settings, {checkpoint: its restrictions still to do})."""
    results: dict[str, dict[str, dict[str, Any]]] = {r.name: {} for r in rs}
    todo: dict[str, list[Restriction]] = {}
    for ckpt in chosen:
        for r in rs:
            done = store.read_done(run, r.name, ckpt.name, keys[r.name])
            if done is not None:
                results[r.name][ckpt.name] = done
            else:
                todo.setdefault(ckpt.name, []).append(r)
    return results, todo


def _batches(
    chosen: list[CheckpointInfo], rs: list[Restriction], todo: dict[str, list[Restriction]], group: int
) -> list[tuple[list[Restriction], list[CheckpointInfo]]]:
    """The batched computations: checkpoints missing the same restrictions (all of them, usually)
    sampled together, `group` checkpoints at a time, in training order."""
    same: dict[tuple[str, ...], list[CheckpointInfo]] = {}
    for ckpt in chosen:
        if ckpt.name in todo:
            same.setdefault(tuple(r.name for r in todo[ckpt.name]), []).append(ckpt)
    by_name = {r.name: r for r in rs}
    return [
        ([by_name[n] for n in names], ckpts[start : start + group])
        for names, ckpts in same.items()
        for start in range(0, len(ckpts), group)
    ]


def as_specs(restrict: Specs) -> list[str | Restriction]:
    return [restrict] if isinstance(restrict, (str, Restriction)) else list(restrict)


def named(rs: list[Restriction], data: str | None) -> list[Restriction]:
    """With a data restriction, each restriction stored as "<restriction>@<data>"."""
    return rs if data is None else [replace(r, name=f"{r.name}@{data}") for r in rs]


def with_picks(run: RunDir, rs: list[Restriction]) -> list[Restriction]:
    """The restrictions with the ε and γ that `calibrate` picked for them, where their spec states
    neither; the whole model (`all`) keeps the run's settings, which its calibration wrote."""
    stored = store.read_calibrations(run)
    out = []
    for r in rs:
        pick = store.calibrated_pick(stored[r.name]) if r.name in stored and r.name != store.WHOLE else None
        if pick is not None and r.epsilon is None and r.gamma is None:
            r = replace(r, epsilon=pick["epsilon"], gamma=pick["gamma"])
        out.append(r)
    return out


def stored_key(base: dict[str, Any], r: Restriction) -> dict[str, Any]:
    """The settings stored with an estimate (and compared to skip it): its own ε, nβ and γ, and
    what it samples."""
    key = dict(base, restriction=r.describe())
    for name in ("nbeta", "gamma", "epsilon"):
        if getattr(r, name) is not None:
            key[name] = getattr(r, name)
    return key


def resolved(settings: LLCSettings, objective: Objective, cfg: RunConfig) -> dict[str, Any]:
    """The settings as stored with a result: nβ, batch size and weight decay filled in."""
    nbeta, m = resolve_nbeta(settings, objective.n_data)
    wd = sampled_weight_decay(settings, cfg)
    return settings.model_copy(update={"nbeta": nbeta, "batch_size": m, "weight_decay": wd}).model_dump(mode="json")


def center_weights(run: RunDir, ckpt: CheckpointInfo, objective: Objective) -> dict[str, torch.Tensor]:
    """A checkpoint's weights as the centre w* of its chains, on the objective's device."""
    tensors, _ = read_weights(run, ckpt)
    names = [n for n, _ in objective.model.named_parameters()]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ToylensError(f"{run.path / ckpt.file}: weights do not match the run's model (missing {missing[:3]})")
    return {n: tensors[n].to(objective.device) for n in names}


def estimate_loaded(loaded: Loaded, settings: LLCSettings | None = None, *, progress: bool = False) -> LLCEstimate:
    """The whole-model LLC of one loaded checkpoint (`toylens.load(run, checkpoint)`), nothing written."""
    settings = settings or (store.load_settings(loaded.run) if loaded.run is not None else LLCSettings())
    objective = run_objective(loaded.model, loaded.config, loaded.task, settings)
    center = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    est = estimate_many(objective, [center], settings, progress=progress)[0]
    est.settings = resolved(settings, objective, loaded.config)
    return est
