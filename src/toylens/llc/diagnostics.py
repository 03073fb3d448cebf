"""From sampled loss traces to an LLC estimate with its health checks.

    λ̂ = nβ · (mean sampled loss after burn-in - L(w*))

computed per chain, then averaged over chains. Each estimate carries:

- `llc_std` (spread across chains) and `llc_se` (standard error of the mean over chains);
- `acceptance`: mean MALA acceptance probability of the SGLD proposals that were scored. Near 1:
  almost exact steps. Along an unadjusted chain at its own equilibrium the log acceptance ratio
  is symmetric about 0, so the mean cannot fall much below 0.5 (reached when the steps are far
  from MALA-exact); well below 0.5 means the chain is not in equilibrium;
- `frac_below_init`: fraction of draws whose minibatch loss is below L(w*);
- the convergence check: λ̂ from the first half of the draws against λ̂ from all of them
  (the effect of doubling the draws); `converged` when it moves by at most 5%;
- `warnings`: one line per unhealthy sign (non-finite loss, negative λ̂, acceptance near 0 or 1,
  a drifting trace, most draws below the initial loss, not converged). They are also logged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

log = logging.getLogger("toylens")

CONVERGENCE_TOLERANCE = 0.05
ACCEPTANCE_LOW = 0.25
ACCEPTANCE_HIGH = 0.999
DRIFT_RELATIVE = 0.1
DRIFT_SIGNIFICANCE = 3.0


@dataclass
class LLCEstimate:
    """One LLC estimate: the number, its error bars, the diagnostics, and the raw traces."""

    llc: float
    llc_std: float
    llc_se: float
    llc_chains: list[float]
    llc_half: float
    rel_change: float
    converged: bool
    init_loss: float
    train_loss: float
    nbeta: float
    epsilon: float
    gamma: float
    acceptance: float
    frac_below_init: float
    drift: float
    warnings: list[str]
    flags: list[str]
    loss_trace: Float[Tensor, "chains steps"] = field(repr=False)
    accept_trace: Float[Tensor, "chains checks"] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.warnings

    def summary(self) -> dict[str, Any]:
        """Everything but the traces, JSON-ready (NaN becomes null)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("loss_trace", "accept_trace")}
        return _json_safe(out)

    def traces(self) -> dict[str, Tensor]:
        return {"loss": self.loss_trace, "accept": self.accept_trace}


def summarise(
    loss: Float[Tensor, "chains steps"],
    accept: Float[Tensor, "chains checks"],
    *,
    init_loss: float,
    train_loss: float,
    nbeta: float,
    burnin: int,
    thin: int,
    epsilon: float,
    gamma: float,
    label: str = "",
) -> LLCEstimate:
    """The LLC estimate and its diagnostics from one estimate's traces."""
    draws = loss[:, burnin::thin].double()
    n = draws.shape[1]
    per_chain = nbeta * (draws.mean(1) - init_loss)
    first = nbeta * (draws[:, : max(n // 2, 1)].mean(1) - init_loss)
    second = nbeta * (draws[:, n // 2 :].mean(1) - init_loss)
    llc, llc_half = float(per_chain.mean()), float(first.mean())
    chains = per_chain.shape[0]
    std = float(per_chain.std()) if chains > 1 else float("nan")
    rel_change = abs(llc - llc_half) / abs(llc) if llc != 0 else float("inf")
    drift = second - first
    est = LLCEstimate(
        llc=llc,
        llc_std=std,
        llc_se=std / math.sqrt(chains) if chains > 1 else float("nan"),
        llc_chains=per_chain.tolist(),
        llc_half=llc_half,
        rel_change=rel_change,
        converged=bool(rel_change <= CONVERGENCE_TOLERANCE),
        init_loss=init_loss,
        train_loss=train_loss,
        nbeta=nbeta,
        epsilon=epsilon,
        gamma=gamma,
        acceptance=float(accept.mean()) if accept.numel() else float("nan"),
        frac_below_init=float((draws < init_loss).double().mean()),
        drift=float(drift.mean()),
        warnings=[],
        flags=[],
        loss_trace=loss.float(),
        accept_trace=accept.float(),
    )
    found = health_warnings(est, drift)
    est.flags, est.warnings = [f for f, _ in found], [w for _, w in found]
    for w in est.warnings:
        log.warning("llc%s: %s", f" {label}" if label else "", w)
    return est


def health_warnings(est: LLCEstimate, drift: Tensor) -> list[tuple[str, str]]:
    """(flag, message) per unhealthy sign of an estimate (empty when it looks healthy)."""
    out = []
    if not torch.isfinite(est.loss_trace).all() or not math.isfinite(est.llc):
        return [("nonfinite", f"non-finite loss in the trace (step size ε={est.epsilon:g} too large?)")]
    if est.llc < 0:
        out.append(
            (
                "negative",
                f"negative λ̂ ({est.llc:.3g}): the chains found lower loss than w*, "
                "which is not a local minimum of the sampled objective",
            )
        )
    if math.isfinite(est.acceptance):
        if est.acceptance < ACCEPTANCE_LOW:
            out.append(
                (
                    "low_acceptance",
                    f"MALA acceptance {est.acceptance:.2f} is low: step size ε={est.epsilon:g} is too large",
                )
            )
        elif est.acceptance > ACCEPTANCE_HIGH:
            out.append(
                (
                    "high_acceptance",
                    f"MALA acceptance {est.acceptance:.4f} is near 1: ε={est.epsilon:g} "
                    "may be needlessly small (slow mixing)",
                )
            )
    mean_drift = float(drift.mean())
    se = float(drift.std() / math.sqrt(len(drift))) if len(drift) > 1 else 0.0
    if abs(mean_drift) > DRIFT_RELATIVE * abs(est.llc) and abs(mean_drift) > DRIFT_SIGNIFICANCE * se:
        out.append(
            (
                "drift",
                f"drifting trace: λ̂ from the second half of the draws differs from the first by "
                f"{mean_drift:+.3g} ({DRIFT_SIGNIFICANCE:g}+ standard errors)",
            )
        )
    if est.frac_below_init > 0.5:
        out.append(("below_init", f"{est.frac_below_init:.0%} of draws are below the initial loss"))
    if not est.converged:
        out.append(
            (
                "not_converged",
                f"not converged: λ̂ moves {est.rel_change:.1%} between half and all of "
                f"the draws (> {CONVERGENCE_TOLERANCE:.0%})",
            )
        )
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
