"""The local learning coefficient (LLC): how degenerate the loss landscape is around a model's weights.

    from toylens.llc import LLCSettings, calibrate, estimate_llc, estimate_loaded, llc_over_checkpoints
    est = estimate_llc(model, loss_fn, (x, y), LLCSettings(epsilon=1e-4, gamma=100))   # any nn.Module
    cal = calibrate("runs/sort-no-decay")                  # pick epsilon, gamma on a run's final checkpoint
    results = llc_over_checkpoints("runs/sort-no-decay")   # every checkpoint -> RUN/llc/

or `toylens llc calibrate RUN` then `toylens llc RUN`. The modules, in the order the estimate runs:

    estimator.py    LLCSettings (every hyperparameter), the sampled `Objective`, estimate_llc and
                    estimate_many (all chains of all estimates as one computation)
    sampler.py      batched, localised, tempered SGLD and its MALA acceptance diagnostic
    diagnostics.py  from loss traces to λ̂, its error bars and health warnings (LLCEstimate)
    run.py          a run's checkpoints: the run's training objective, calibration, RUN/llc/ files
"""

from toylens.llc.diagnostics import LLCEstimate
from toylens.llc.estimator import LLCSettings, Objective, estimate_llc, estimate_many
from toylens.llc.run import (
    Calibration, calibrate, choose, estimate_loaded, llc_over_checkpoints, load_settings, read_llc, run_objective,
)

__all__ = [
    "Calibration", "LLCEstimate", "LLCSettings", "Objective", "calibrate", "choose", "estimate_llc", "estimate_loaded",
    "estimate_many", "llc_over_checkpoints", "load_settings", "read_llc", "run_objective",
]
