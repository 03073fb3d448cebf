"""The local learning coefficient (LLC) of a model at its weights w*, by batched SGLD.

    from toylens.llc import LLCSettings, estimate_llc
    est = estimate_llc(model, loss_fn, (x, y), LLCSettings(epsilon=1e-4, gamma=100, chains=4))
    est.llc, est.llc_se, est.warnings, est.loss_trace      # see diagnostics.LLCEstimate

The LLC λ(w*) measures how degenerate the loss landscape is around w* (Lau et al., "Quantifying
degeneracy in singular models via the learning coefficient"): the volume of {w near w* : L(w) <
L(w*) + t} scales as t^λ. It is estimated by sampling the localised, tempered posterior

    p(w) ∝ exp(-nβ·L(w) - (γ/2)·||w - w*||²)

with SGLD (step size ε) and taking λ̂ = nβ·(E[L(w)] - L(w*)), the expectation over the draws after
burn-in and L(w*) averaged over `init_batches` minibatches (the whole data when that is smaller).
nβ defaults to m/ln(m) with m the minibatch size, and is stated in every result.

Works on any `nn.Module` with a `loss_fn(model, batch)`, and on a run's checkpoints, whose L is
the run's training objective; `objective` says what L is in each case. Every chain draws its own
minibatches (with replacement).

All chains of all estimates run as one computation over stacked weights (`torch.func.vmap` of
`functional_call`, or an `Objective`'s own `stacked_fn`, as run directories use for a toylens
transformer); see `sampler`. Run directories: `driver`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from operator import add

import torch
from torch import Tensor, nn

from toylens.llc.diagnostics import LLCEstimate, summarise
from toylens.llc.objective import Data, LossFn, Objective, module_objective
from toylens.llc.restrict import Restriction
from toylens.llc.sampler import MinibatchDraws, RowChunks, RowSettings, SamplerRun, row_chunks, run_sgld
from toylens.llc.settings import LLCSettings, resolve_nbeta


def estimate_llc(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    settings: LLCSettings | None = None,
    *,
    progress: bool = False,
) -> LLCEstimate:
    """The LLC of `model` at its current weights (see the module docstring); the objective is
    `loss_fn`, plus (c/2)·||w||² on every parameter with settings.weight_decay = c."""
    settings = settings or LLCSettings()
    objective = module_objective(model, loss_fn, data, settings)
    return estimate_many(objective, [current_weights(model)], settings, progress=progress)[0]


def current_weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def estimate_many(
    objective: Objective,
    centers: Sequence[dict[str, Tensor]],
    settings: LLCSettings,
    *,
    grid: Sequence[tuple[float, float]] | None = None,
    labels: Sequence[str] | None = None,
    restrict: Sequence[Restriction] | None = None,
    progress: bool = False,
) -> list[LLCEstimate]:
    """One estimate per centre (checkpoint weights), all chains advancing together.

    With `grid` [(epsilon, gamma), ...] there is one centre and one estimate per grid point
    (a calibration sweep); otherwise every estimate uses `settings.epsilon` and `settings.gamma`.
    With `restrict` (see `restrict.restrictions`) there is one estimate per centre and restriction,
    centre by centre ([c0 r0, c0 r1, ..., c1 r0, ...]; `labels` then name those), each sampling only
    its restricted weights with its own ε, nβ and γ (default: the settings'). With both, a
    per-restriction calibration sweep: one centre, restriction by restriction, every grid point
    ([r0 g0, r0 g1, ..., r1 g0, ...]), the grid's ε and γ over the restrictions' own.
    """
    if grid is not None and len(centers) != 1:
        raise ValueError("a grid sweep takes exactly one centre")
    nbeta, m = resolve_nbeta(settings, objective.n_data)
    plan = _plan(len(centers), settings, nbeta, grid, restrict)
    start = time.perf_counter()
    stacked = {k: torch.stack([c[k] for c in centers]).to(objective.device) for k in centers[0]}
    chains = settings.chains
    with row_chunks(objective.rows_per_chunk(m), len(plan) * chains) as chunks:
        init = initial_loss(objective, stacked, settings, m, chunks)  # once per centre
        run = _sample(objective, stacked, plan, settings, m, chunks, progress)
    wall = (time.perf_counter() - start) / len(plan)
    out = []
    for i, p in enumerate(plan):
        block = slice(i * chains, (i + 1) * chains)
        est = summarise(
            run.loss[block],
            run.accept[block],
            init_loss=float(init["total"][p.centre]),
            train_loss=float(init["loss"][p.centre]),
            nbeta=p.nbeta,
            burnin=settings.burnin,
            thin=settings.thin,
            epsilon=p.epsilon,
            gamma=p.gamma,
            label=labels[i] if labels else "",
        )
        est.settings = settings.model_copy(
            update={"epsilon": p.epsilon, "gamma": p.gamma, "nbeta": p.nbeta, "batch_size": m}
        ).model_dump(mode="json")
        est.wall_s = wall
        out.append(est)
    return out


@dataclass
class _Point:
    """One estimate of a batched computation: its centre, hyperparameters and restriction."""

    centre: int
    epsilon: float
    gamma: float
    nbeta: float
    restriction: Restriction | None = None


def _plan(
    n_centres: int,
    settings: LLCSettings,
    nbeta: float,
    grid: Sequence[tuple[float, float]] | None,
    restrict: Sequence[Restriction] | None,
) -> list[_Point]:
    if grid is not None:
        if restrict is None:
            return [_Point(0, e, g, nbeta) for e, g in grid]
        return [_Point(0, e, g, nbeta if r.nbeta is None else r.nbeta, r) for r in restrict for e, g in grid]
    if restrict is None:
        return [_Point(c, settings.epsilon, settings.gamma, nbeta) for c in range(n_centres)]
    return [
        _Point(
            c,
            settings.epsilon if r.epsilon is None else r.epsilon,
            settings.gamma if r.gamma is None else r.gamma,
            nbeta if r.nbeta is None else r.nbeta,
            r,
        )
        for c in range(n_centres)
        for r in restrict
    ]


def _sample(
    objective: Objective,
    stacked: dict[str, Tensor],
    plan: list[_Point],
    settings: LLCSettings,
    m: int | None,
    chunks: RowChunks,
    progress: bool,
) -> SamplerRun:
    """The SGLD run of every chain of every estimate (rows grouped by estimate)."""
    chains = settings.chains

    def per_row(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64).repeat_interleave(chains)

    rows = RowSettings(
        epsilon=per_row([p.epsilon for p in plan]),
        gamma=per_row([p.gamma for p in plan]),
        nbeta=per_row([p.nbeta for p in plan]),
        mask=_row_masks(stacked, plan, chains),
    )
    centre = torch.tensor([p.centre for p in plan], device=next(iter(stacked.values())).device)
    draws = MinibatchDraws(settings.seed, len(plan), chains, objective.n_data, m, objective.device)
    return run_sgld(
        objective,
        {k: v[centre].repeat_interleave(chains, 0) for k, v in stacked.items()},
        rows,
        draws,
        steps=settings.steps,
        precondition=settings.precondition,
        rmsprop_alpha=settings.rmsprop_alpha,
        rmsprop_delta=settings.rmsprop_delta,
        adapt_steps=settings.burnin // 2,
        mala_every=settings.mala_every,
        chunks=chunks,
        progress=progress,
    )


def _row_masks(stacked: dict[str, Tensor], plan: list[_Point], chains: int) -> dict[str, Tensor] | None:
    """{name: bool [rows, *shape]} when any estimate samples part of the weights; None when every
    estimate samples them all (the whole model, also as the restriction `all`: then the computation
    is exactly the unrestricted one)."""
    shapes = {k: v.shape[1:] for k, v in stacked.items()}
    if all(p.restriction is None or p.restriction.samples_everything(shapes) for p in plan):
        return None
    device = next(iter(stacked.values())).device
    per_point = [
        p.restriction.full(shapes, device)
        if p.restriction is not None
        else {k: torch.ones(s, dtype=torch.bool, device=device) for k, s in shapes.items()}
        for p in plan
    ]
    return {k: torch.stack([mk[k] for mk in per_point]).repeat_interleave(chains, 0) for k in shapes}


def initial_loss(
    objective: Objective,
    stacked: dict[str, Tensor],
    settings: LLCSettings,
    m: int | None,
    rows: RowChunks | None = None,
) -> dict[str, Tensor]:
    """L(w*) per centre and per term ("total" = the sum), averaged over many minibatches.

    Uses the whole data (in chunks of m, weighted by size) when it has at most init_batches·m
    examples, else `init_batches` random minibatches of m drawn from a stream of their own.
    Centres are computed in `rows`' chunks (default: all at once).
    """

    def terms(w: dict[str, Tensor], idx: Tensor | None) -> tuple[dict[str, Tensor]]:
        with torch.no_grad():  # grad mode is per thread: set it where the chunk runs
            return (objective.terms(w, idx),)

    rows = rows or RowChunks()
    k = next(iter(stacked.values())).shape[0]
    n = objective.n_data
    if n is None:
        chunks: list[Tensor | None] = [None]
        weights = [1.0]
    elif m is None or m >= n:
        chunks, weights = [None], [1.0]
    elif n <= settings.init_batches * m:
        chunks = [torch.arange(s, min(s + m, n)).expand(k, -1) for s in range(0, n, m)]
        weights = [c.shape[1] / n for c in chunks]  # type: ignore[union-attr]
    else:
        draws = MinibatchDraws(settings.seed + 1, k, 1, n, m)
        chunks = [draws.indices() for _ in range(settings.init_batches)]
        weights = [1.0 / settings.init_batches] * settings.init_batches
    sums: dict[str, Tensor] = {}
    for idx, weight in zip(chunks, weights):
        parts = [p[0] for p in rows.map(terms, stacked, idx)]
        for name in parts[0]:
            value = torch.cat([p[name] for p in parts])
            part = weight * value.double()  # summed on the device, copied to the CPU once below
            sums[name] = sums[name] + part if name in sums else part
    sums = {name: value.cpu() for name, value in sums.items()}
    sums["total"] = reduce(add, sums.values())
    sums.setdefault("loss", sums["total"])
    return sums
