"""toylens: train small transformers from scratch and open them up.

The pipeline, one call per stage; each reads only what the previous one wrote:

    import toylens
    result = toylens.train("configs/sort-no-decay.yaml", out="runs")  # -> runs/sort-no-decay/
    toylens.analyze(result.run_dir, checkpoint="all")    # -> RUN/analysis/ (circuits, patching, ...)
    toylens.llc_over_checkpoints(result.run_dir)          # -> RUN/llc/ (LLC of every checkpoint)
    toylens.report([result.run_dir], "report.html")      # one self-contained HTML file
    run = toylens.load(result.run_dir)                    # the model: .model, .config, .task
    toylens.sweep("configs/sweeps/sort-weight-decay.yaml")             # many runs from one spec
    toylens.reproduce("sorting-weight-decay", size="quick")            # a whole study, end to end

A run is given as its directory (str or path) or a `RunDir`; `device` is "auto" everywhere
(cuda when available, else cpu). `calibrate_llc` picks the LLC sampler's step size first.

`train`, `report`, `sweep` and `reproduce` are also the names of modules (`toylens.train.loop`,
`toylens.sweep.runner`, ...): reach those with `from toylens.reproduce import ...`, since the
attribute `toylens.reproduce` is the function. `analyze`, `llc_over_checkpoints` and
`calibrate_llc` are imported on first use (they bring in every analysis). The LLC's function is
not called `toylens.llc`, so that a module of that name can never replace it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from toylens.config import RunConfig, load_config
from toylens.errors import ToylensError
from toylens.model import Transformer
from toylens.report import ReportResult, report
from toylens.reproduce import reproduce
from toylens.run import Loaded, RunDir, RunLike, load
from toylens.sweep import run_sweep as sweep
from toylens.train import TrainResult, train
from toylens.version import __version__

if TYPE_CHECKING:
    from toylens.analysis.driver import analyze
    from toylens.llc.run import calibrate as calibrate_llc
    from toylens.llc.run import llc_over_checkpoints

_ON_FIRST_USE = {
    "analyze": ("toylens.analysis.driver", "analyze"),
    "llc_over_checkpoints": ("toylens.llc.run", "llc_over_checkpoints"),
    "calibrate_llc": ("toylens.llc.run", "calibrate"),
}

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
