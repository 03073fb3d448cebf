"""The local learning coefficient (LLC) of a model at its weights w*, by batched SGLD.

    from toylens.llc.estimator import LLCSettings, estimate_llc
    est = estimate_llc(model, loss_fn, (x, y), LLCSettings(epsilon=1e-4, gamma=100, chains=4))
    est.llc, est.llc_se, est.warnings, est.loss_trace      # see diagnostics.LLCEstimate

The LLC λ(w*) measures how degenerate the loss landscape is around w* (Lau et al., "Quantifying
degeneracy in singular models via the learning coefficient"): the volume of {w near w* : L(w) <
L(w*) + t} scales as t^λ. It is estimated by sampling the localised, tempered posterior

    p(w) ∝ exp(-nβ·L(w) - (γ/2)·||w - w*||²)

with SGLD (step size ε) and taking λ̂ = nβ·(E[L(w)] - L(w*)), the expectation over the draws after
burn-in and L(w*) averaged over `init_batches` minibatches (the whole data when that is smaller).
nβ defaults to m/ln(m) with m the minibatch size, and is stated in every result.

Works on any `nn.Module`: `loss_fn(model, batch)` gets a callable that runs the module with one
chain's weights and a minibatch (a tuple of tensors, indexed along dim 0 of `data`), and returns
the scalar loss, or a dict of named scalar terms that are summed ("loss" is reported as the train
loss, the others are regularisers such as "l1"). With `data=None` there is no minibatch and
`loss_fn(model, ())` is the whole potential (closed-form tests). Every chain draws its own
minibatches (with replacement). `weight_decay` ({parameter name: c}) adds (c/2)·||w||² to L.

All chains of all estimates run as one computation over stacked weights (`torch.func.vmap` of
`functional_call`, or an `Objective`'s own `stacked_fn`, as run directories use for a toylens
transformer); see `sampler`. Run directories: `toylens.llc.run`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, vmap

from toylens.llc.diagnostics import LLCEstimate, summarise
from toylens.llc.sampler import MinibatchDraws, RowChunks, RowSettings, SamplerRun, row_chunks, run_sgld
from toylens.config import Section
from toylens.errors import ToylensError
from toylens.tasks.base import Split

LossFn = Callable[[Callable[..., Any], tuple], Union[Tensor, dict[str, Tensor]]]
Data = Union[tuple[Tensor, ...], Split, None]
StackedLossFn = Callable[..., dict[str, Tensor]]
# Rows per CPU chunk of a stacked objective: as many as keep one activation of the chunk (a row's
# minibatch x sequence x widest layer) under this many elements, about 3 MB of float32. Measured
# on the sort model (2 cores): 2 rows per chunk 7-8 ms per row and step, 1 row 8-9 ms, all 8 rows
# at once 12.5 ms.
CHUNK_ELEMENTS = 3 << 18


class LLCSettings(Section):
    """Hyperparameters of one LLC estimate (all stored with every result)."""

    epsilon: float = Field(3e-4, gt=0)
    """SGLD step size ε (the noise has variance ε, the drift is -(ε/2)·∇U)."""
    gamma: float = Field(300.0, ge=0)
    """Localisation strength γ of the (γ/2)·||w - w*||² term."""
    nbeta: float | None = Field(None, gt=0)
    """Inverse temperature nβ (default: m / ln m, m the minibatch size)."""
    batch_size: int | None = Field(64, ge=2)
    """Minibatch size m per chain per step (null: the whole training data every step)."""
    chains: int = Field(4, ge=1)
    """Independent chains per estimate."""
    draws: int = Field(100, ge=2)
    """Draws kept per chain after burn-in (the convergence check compares the first half with all)."""
    burnin: int = Field(50, ge=0)
    """SGLD steps discarded before the first draw."""
    thin: int = Field(1, ge=1)
    """SGLD steps between kept draws."""
    precondition: Literal["none", "rmsprop"] = "none"
    """Plain SGLD, or RMSProp-preconditioned SGLD (per-weight step ε / (sqrt(V) + δ), V adapted
    from the squared drift in the first half of the burn-in, then frozen so that the chain has
    the second half to settle under a fixed preconditioner before the draws)."""
    rmsprop_alpha: float = Field(0.99, gt=0, lt=1)
    """Decay of the running mean V of the squared drift (rmsprop only)."""
    rmsprop_delta: float = Field(0.1, gt=0)
    """δ in the RMSProp preconditioner 1 / (sqrt(V) + δ); it caps the per-weight step at ε/δ,
    which matters at w* where the drift, and so V, starts near zero."""
    weight_decay: float | None = Field(0.0, ge=0)
    """Coefficient c of a (c/2)·||w||² term added to the sampled objective on the run's decayed
    parameters (null: the run's train.weight_decay). Off by default: AdamW's decoupled decay is
    not this term (its stationary point balances the decay against Adam-scaled gradients), and the
    term adds curvature nβ·c to every decayed weight, which swamps λ̂ (see README)."""
    l1: bool = True
    """Include the run's L1 activation penalty (train.l1) in the sampled objective (it is part of
    the loss the optimiser minimised, so w* is closer to a stationary point with it)."""
    init_batches: int = Field(32, ge=1)
    """Minibatches averaged for L(w*) (the whole training data when that is smaller)."""
    mala_every: int = Field(10, ge=0)
    """Score every k-th proposal for the MALA acceptance diagnostic (costs one extra pass; 0: off)."""
    seed: int = Field(0, ge=0)
    """Seed of the minibatches and the noise (each estimate uses the same streams)."""

    @property
    def steps(self) -> int:
        return self.burnin + self.draws * self.thin


def default_nbeta(m: int) -> float:
    """m / ln m: the inverse temperature for minibatch size m (Watanabe's β = 1/ln n at n = m)."""
    return m / math.log(m)


class Objective:
    """The sampled objective L for stacked weights: `loss_fn` on each row's minibatch, plus decay."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, data: Data, weight_decay: dict[str, float] | None = None,
                 stacked_fn: StackedLossFn | None = None):
        """`stacked_fn(params, *batch)`, if given, computes every row's terms at once from stacked
        parameters and a batch with a leading row axis, in place of vmapping `loss_fn` (which
        may then be None)."""
        if loss_fn is None and (stacked_fn is None or data is None):
            raise ValueError("Objective needs loss_fn, or stacked_fn and data")
        self.model, self.loss_fn, self.data, self.stacked_fn = model, loss_fn, data, stacked_fn
        self.weight_decay = {k: c for k, c in (weight_decay or {}).items() if c}
        unknown = set(self.weight_decay) - {n for n, _ in model.named_parameters()}
        if unknown:
            raise ToylensError(f"weight_decay: no parameter named {sorted(unknown)[0]!r} in the model")
        self.device = next(model.parameters()).device
        self.n_data = None if data is None else len(data) if isinstance(data, Split) else len(data[0])
        self._batched = vmap(self._one)
        self._all: tuple[Tensor, ...] | None = None

    def _one(self, params: dict[str, Tensor], *batch: Tensor) -> dict[str, Tensor]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.model, params, args, kwargs)

        assert self.loss_fn is not None  # __init__: without loss_fn every call goes to stacked_fn
        out = self.loss_fn(call, batch)
        return out if isinstance(out, dict) else {"loss": out}

    def rows_per_chunk(self, m: int | None) -> int | None:
        """Rows to compute together on a CPU (see `CHUNK_ELEMENTS`); None: all rows at once (on
        an accelerator, and for objectives without a stacked transformer forward, whose models
        are small enough that one computation is best)."""
        cfg = getattr(self.model, "cfg", None)
        if self.device.type != "cpu" or self.stacked_fn is None or cfg is None or not self.n_data:
            return None
        pos = self.fetch(torch.zeros(1, 1, dtype=torch.long))[0].shape[-1]
        width = max(cfg.d_model, 3 * cfg.n_heads * cfg.d_head, 0 if cfg.attn_only else cfg.d_mlp, cfg.d_vocab_out)
        return max(1, CHUNK_ELEMENTS // ((m or self.n_data) * pos * width))

    def fetch(self, idx: Tensor) -> tuple[Tensor, ...]:
        """The minibatches for indices [rows, m], as tensors [rows, m, ...] on the model's device."""
        flat = idx.reshape(-1)
        if isinstance(self.data, Split):
            b = self.data.batch(flat)
            parts: tuple[Tensor, ...] = (b.tokens, b.targets)
        else:
            parts = tuple(t[flat] for t in self.data)  # type: ignore[union-attr]
        return tuple(p.reshape(*idx.shape, *p.shape[1:]).to(self.device) for p in parts)

    def everything(self) -> tuple[Tensor, ...]:
        """The whole data set on the model's device (kept after the first call)."""
        if self._all is None:
            self._all = tuple(t[0] for t in self.fetch(torch.arange(self.n_data or 0).unsqueeze(0)))
        return self._all

    def terms(self, params: dict[str, Tensor], idx: Tensor | None) -> dict[str, Tensor]:
        """Each named term of L per row ([rows] each); idx None: the whole data for every row."""
        if self.data is None:
            terms = vmap(lambda p: self._one(p))(params)
        elif idx is None:  # one copy of the data shared by every row
            data = self.everything()
            if self.stacked_fn is not None:
                rows = next(iter(params.values())).shape[0]
                terms = self.stacked_fn(params, *(t.expand(rows, *t.shape) for t in data))
            else:
                terms = vmap(self._one, in_dims=(0,) + (None,) * len(data))(params, *data)
        elif self.stacked_fn is not None:
            terms = self.stacked_fn(params, *self.fetch(idx))
        else:
            terms = self._batched(params, *self.fetch(idx))
        if self.weight_decay:
            terms["weight_decay"] = sum(0.5 * c * params[k].pow(2).flatten(1).sum(1) for k, c in self.weight_decay.items())
        return terms

    def __call__(self, params: dict[str, Tensor], idx: Tensor | None) -> Tensor:
        return sum(self.terms(params, idx).values())  # type: ignore[return-value]


def estimate_llc(
    model: nn.Module, loss_fn: LossFn, data: Data, settings: LLCSettings | None = None, *,
    weight_decay: dict[str, float] | None = None, progress: bool = False,
) -> LLCEstimate:
    """The LLC of `model` at its current weights (see the module docstring)."""
    objective = Objective(model, loss_fn, data, weight_decay)
    return estimate_many(objective, [current_weights(model)], settings or LLCSettings(), progress=progress)[0]


def current_weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def resolve_nbeta(settings: LLCSettings, n_data: int | None) -> tuple[float, int | None]:
    """(nβ, minibatch size) for a data set of n_data examples (None: no data)."""
    m = None if n_data is None else min(settings.batch_size or n_data, n_data)
    if settings.nbeta is not None:
        return settings.nbeta, m
    if m is None or m < 2:
        raise ToylensError("nbeta: must be given when there is no data to take a minibatch size from")
    return default_nbeta(m), m


def estimate_many(
    objective: Objective,
    centers: Sequence[dict[str, Tensor]],
    settings: LLCSettings,
    *,
    grid: Sequence[tuple[float, float]] | None = None,
    labels: Sequence[str] | None = None,
    progress: bool = False,
) -> list[LLCEstimate]:
    """One estimate per centre (checkpoint weights), all chains advancing together.

    With `grid` [(epsilon, gamma), ...] there is one centre and one estimate per grid point
    (a calibration sweep); otherwise every estimate uses `settings.epsilon` and `settings.gamma`.
    """
    if grid is not None:
        if len(centers) != 1:
            raise ValueError("a grid sweep takes exactly one centre")
        centers = list(centers) * len(grid)
    points = list(grid) if grid is not None else [(settings.epsilon, settings.gamma)] * len(centers)
    nbeta, m = resolve_nbeta(settings, objective.n_data)
    start = time.perf_counter()
    stacked = {k: torch.stack([c[k] for c in centers]).to(objective.device) for k in centers[0]}
    chains = settings.chains
    with row_chunks(objective.rows_per_chunk(m), len(points) * chains) as chunks:
        init = initial_loss(objective, stacked, settings, m, chunks)
        run = _sample(objective, stacked, points, settings, nbeta, m, chunks, progress)
    wall = (time.perf_counter() - start) / len(points)
    out = []
    for i, (eps, gamma) in enumerate(points):
        block = slice(i * chains, (i + 1) * chains)
        est = summarise(
            run.loss[block], run.accept[block], init_loss=float(init["total"][i]), train_loss=float(init["loss"][i]),
            nbeta=nbeta, burnin=settings.burnin, thin=settings.thin, epsilon=eps, gamma=gamma,
            label=labels[i] if labels else "",
        )
        est.settings = settings.model_copy(update={"epsilon": eps, "gamma": gamma, "nbeta": nbeta,
                                                   "batch_size": m}).model_dump(mode="json")
        est.wall_s = wall
        out.append(est)
    return out


def _sample(objective: Objective, stacked: dict[str, Tensor], points: list[tuple[float, float]], settings: LLCSettings,
            nbeta: float, m: int | None, chunks: RowChunks, progress: bool) -> SamplerRun:
    """The SGLD run of every chain of every estimate (rows grouped by estimate)."""
    chains = settings.chains
    rows = RowSettings(
        epsilon=torch.tensor([e for e, _ in points], dtype=torch.float64).repeat_interleave(chains),
        gamma=torch.tensor([g for _, g in points], dtype=torch.float64).repeat_interleave(chains),
        nbeta=torch.full((len(points) * chains,), nbeta, dtype=torch.float64),
    )
    draws = MinibatchDraws(settings.seed, len(points), chains, objective.n_data, m)
    return run_sgld(
        objective, {k: v.repeat_interleave(chains, 0) for k, v in stacked.items()}, rows, draws,
        steps=settings.steps, precondition=settings.precondition, rmsprop_alpha=settings.rmsprop_alpha,
        rmsprop_delta=settings.rmsprop_delta, adapt_steps=settings.burnin // 2, mala_every=settings.mala_every,
        chunks=chunks, progress=progress,
    )


def initial_loss(objective: Objective, stacked: dict[str, Tensor], settings: LLCSettings, m: int | None,
                 rows: RowChunks | None = None) -> dict[str, Tensor]:
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
            sums[name] = sums.get(name, 0) + weight * value.double().cpu()
    sums["total"] = sum(v for v in sums.values())
    sums.setdefault("loss", sums["total"])
    return sums
