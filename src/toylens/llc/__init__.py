"""The local learning coefficient (LLC): how degenerate the loss landscape is around a model's weights.

    import toylens
    from toylens.llc import LLCSettings, estimate_llc
    est = estimate_llc(model, loss_fn, (x, y), LLCSettings(epsilon=1e-4, gamma=100))   # any nn.Module
    toylens.calibrate_llc("runs/sort-no-decay")              # pick ε, γ on a run's final checkpoint
    toylens.llc_over_checkpoints("runs/sort-no-decay")       # every checkpoint -> RUN/llc/all/
    toylens.calibrate_llc("runs/induction-2l", restrict="heads")          # pick ε, γ per head
    toylens.llc_over_checkpoints("runs/induction-2l", restrict="heads")   # -> RUN/llc/l0h0/ ...

or `toylens llc calibrate RUN` then `toylens llc RUN`. The whole model is the restriction `all`:
one driver estimates any set of restrictions at any checkpoints, one function calibrates them, one
layout holds them. The modules, in the order an estimate runs:

    settings.py     LLCSettings: every hyperparameter, stored with every result
    objective.py    the sampled objective L: a run's training objective (task loss + the run's
                    regularisers, as the trainer has them), or any module's loss_fn
    restrict.py     weight restrictions (refined LLC): all, heads, layers, embed, unembed, globs
    sampler.py      batched, localised, tempered SGLD and its MALA acceptance diagnostic
    estimator.py    estimate_llc, estimate_many: all chains of all estimates as one computation
    diagnostics.py  from loss traces to λ̂, its error bars and health warnings (LLCEstimate)
    driver.py       llc_over_checkpoints: a run's checkpoints x restrictions, resumable
    calibration.py  calibrate: the step size and localisation, per restriction
    store.py        the files under RUN/llc/
"""

from toylens.llc.calibration import Calibration, calibrate, choose
from toylens.llc.diagnostics import LLCEstimate
from toylens.llc.driver import estimate_loaded, llc_over_checkpoints
from toylens.llc.estimator import estimate_llc, estimate_many
from toylens.llc.objective import Objective, module_objective, run_objective
from toylens.llc.restrict import Restriction, restrictions
from toylens.llc.settings import LLCSettings
from toylens.llc.store import WHOLE, load_settings, read_calibrations, read_estimates

__all__ = [
    "WHOLE",
    "Calibration",
    "LLCEstimate",
    "LLCSettings",
    "Objective",
    "Restriction",
    "calibrate",
    "choose",
    "estimate_llc",
    "estimate_loaded",
    "estimate_many",
    "llc_over_checkpoints",
    "load_settings",
    "module_objective",
    "read_calibrations",
    "read_estimates",
    "restrictions",
    "run_objective",
]
