"""The local learning coefficient (LLC): how degenerate the loss landscape is around a model's weights.

    from toylens.llc import LLCSettings, calibrate, estimate_llc, estimate_loaded, llc_over_checkpoints
    est = estimate_llc(model, loss_fn, (x, y), LLCSettings(epsilon=1e-4, gamma=100))   # any nn.Module
    cal = calibrate("runs/sort-no-decay")                  # pick epsilon, gamma on a run's final checkpoint
    results = llc_over_checkpoints("runs/sort-no-decay")   # every checkpoint -> RUN/llc/
    calibrate_restricted("runs/induction-2l", ["heads"])       # pick epsilon, gamma per head
    refined = restricted_llc("runs/induction-2l", ["heads"])   # per head -> RUN/llc/restricted/

or `toylens llc calibrate RUN` then `toylens llc RUN`. The modules, in the order the estimate runs:

    settings.py     LLCSettings: every hyperparameter, stored with every result
    objective.py    the sampled objective L: a run's training objective (task loss + the run's
                    regularisers, as the trainer has them), or any module's loss_fn
    sampler.py      batched, localised, tempered SGLD and its MALA acceptance diagnostic
    restrict.py     weight restrictions (refined LLC): heads, layers, embed, unembed, globs
    estimator.py    estimate_llc, estimate_many: all chains of all estimates as one computation
    diagnostics.py  from loss traces to λ̂, its error bars and health warnings (LLCEstimate)
    run.py          a run's checkpoints, calibration of the sampler, the files under RUN/llc/
"""

from toylens.llc.diagnostics import LLCEstimate
from toylens.llc.estimator import estimate_llc, estimate_many
from toylens.llc.objective import Objective, module_objective, run_objective
from toylens.llc.restrict import Restriction, restrictions
from toylens.llc.run import (
    Calibration,
    calibrate,
    calibrate_restricted,
    choose,
    estimate_loaded,
    llc_over_checkpoints,
    load_settings,
    read_llc,
    read_restricted,
    restricted_llc,
)
from toylens.llc.settings import LLCSettings

__all__ = [
    "Calibration",
    "LLCEstimate",
    "LLCSettings",
    "Restriction",
    "Objective",
    "calibrate",
    "calibrate_restricted",
    "choose",
    "estimate_llc",
    "estimate_loaded",
    "estimate_many",
    "llc_over_checkpoints",
    "load_settings",
    "module_objective",
    "read_llc",
    "read_restricted",
    "restricted_llc",
    "restrictions",
    "run_objective",
]
