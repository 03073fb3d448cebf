"""Reading training as development: essential dynamics and stages, over every checkpoint of a run.

    import toylens
    ed, stages = toylens.development("runs/induction-2l")   # = toylens development RUN

The modules: `stages` (pure curve maths: smoothing in log-step, critical points, stage
boundaries, clustering curves), `essential_dynamics` (the PCA of the outputs on a probe set over
checkpoints), `driver` (`development`: both for a run, saved under RUN/development/; it reads the
whole-model LLC curve that `toylens llc` saved). The refined LLC of each head over training, which
the report shows beside these, is `toylens llc RUN --restrict heads`.
"""

from toylens.development.driver import LLC_CURVE, LOSS_CURVE, STAGES_PATH, Stages, development, stages
from toylens.development.essential_dynamics import ED_PATH, EssentialDynamics, essential_dynamics, pca
from toylens.development.stages import BANDWIDTH, Boundary, cluster_curves, smooth, stage_boundaries

__all__ = [
    "BANDWIDTH",
    "ED_PATH",
    "LLC_CURVE",
    "LOSS_CURVE",
    "STAGES_PATH",
    "Boundary",
    "EssentialDynamics",
    "Stages",
    "cluster_curves",
    "development",
    "essential_dynamics",
    "pca",
    "smooth",
    "stage_boundaries",
    "stages",
]
