"""toylens: train small transformers from scratch and open them up.

The pipeline, one call per stage; each reads the run directory and writes its own folder in it:

    import toylens
    result = toylens.train("configs/sort-no-decay.yaml", out="runs")  # -> runs/sort-no-decay/
    run = result.run_dir
    toylens.analyze(run, checkpoint="all")          # -> RUN/analysis/ (circuits, patching, ...)
    toylens.calibrate_llc(run)                      # -> RUN/llc/settings.json (the sampler's step size)
    toylens.llc_over_checkpoints(run)               # -> RUN/llc/all/ (the LLC of every checkpoint)
    toylens.llc_over_checkpoints(run, restrict="heads")   # -> RUN/llc/l0h0/ ... (per head)
    toylens.development(run)                        # -> RUN/development/ (essential dynamics, stages)
    toylens.report([run], "report.html")            # one self-contained HTML file (reads saved results)
    loaded = toylens.load(run)                      # the model: .model, .config, .task
    toylens.sweep("configs/sweeps/sort-weight-decay.yaml")     # many runs from one spec
    toylens.reproduce("sorting-weight-decay", size="quick")    # a whole study, end to end

A run is given as its directory (str or path) or a `RunDir`; `device` is "auto" everywhere (cuda
when available, else cpu).

`train`, `development`, `report`, `sweep` and `reproduce` are also the names of packages and
modules (`toylens.train.loop`, `toylens.development.stages`, ...): the packages are imported here
before the functions are bound, so the attributes stay the functions; reach the modules with
`from toylens.development import ...`. `toylens.llc` is the LLC's package (settings, sampler,
estimators for any module); its run-level functions are `llc_over_checkpoints` and `calibrate_llc`.
`analyze` is imported on first use (it brings in every analysis).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from toylens.config import RunConfig, load_config
from toylens.development import development
from toylens.errors import ToylensError
from toylens.llc import calibrate as calibrate_llc
from toylens.llc import llc_over_checkpoints
from toylens.model import Transformer
from toylens.report import ReportResult, report
from toylens.reproduce import reproduce
from toylens.rundir import Loaded, RunDir, RunLike, load
from toylens.sweep import run_sweep as sweep
from toylens.train import TrainResult, train
from toylens.version import __version__

if TYPE_CHECKING:
    from toylens.analysis.driver import analyze

_ON_FIRST_USE = {"analyze": ("toylens.analysis.driver", "analyze")}

__all__ = [
    "Loaded",
    "ReportResult",
    "RunConfig",
    "RunDir",
    "RunLike",
    "ToylensError",
    "TrainResult",
    "Transformer",
    "__version__",
    "analyze",
    "calibrate_llc",
    "development",
    "llc_over_checkpoints",
    "load",
    "load_config",
    "report",
    "reproduce",
    "sweep",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'toylens' has no attribute {name!r}")
    module, attr = _ON_FIRST_USE[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
