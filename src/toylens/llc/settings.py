"""The hyperparameters of an LLC estimate, stored with every result (`toylens llc --set KEY=VALUE`)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from toylens.config import Section
from toylens.errors import ToylensError


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
    """Coefficient c of a (c/2)·||w||² term added to the sampled objective: on the parameters a run
    decays (null: the run's train.weight_decay), or on every parameter of a module given to
    `estimate_llc` (which has no run, so null is an error there). Off by default: AdamW's decoupled
    decay is not this term (its stationary point balances the decay against Adam-scaled gradients),
    and the term adds curvature nβ·c to every decayed weight, which swamps λ̂ (see README)."""
    l1: bool = True
    """Include the run's L1 activation penalty (train.l1) in the sampled objective (it is part of
    the loss the optimiser minimised, so w* is closer to a stationary point with it). `estimate_llc`
    samples its loss_fn as the whole objective, with no run penalty to leave out: false is an error there."""
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


def resolve_nbeta(settings: LLCSettings, n_data: int | None) -> tuple[float, int | None]:
    """(nβ, minibatch size) for a data set of n_data examples (None: no data)."""
    m = None if n_data is None else min(settings.batch_size or n_data, n_data)
    if settings.nbeta is not None:
        return settings.nbeta, m
    if m is None or m < 2:
        raise ToylensError("nbeta: must be given when there is no data to take a minibatch size from")
    return default_nbeta(m), m
