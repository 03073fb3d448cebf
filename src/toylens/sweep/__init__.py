"""Sweeps: expand a spec into member runs and train them locally in parallel, on Ray, or as
vectorised ensembles (see `spec` for the YAML format and `runner` for the sweep directory).

    from toylens.sweep import run_sweep
    result = run_sweep("configs/sweeps/sort-weight-decay.yaml", out="runs", jobs=2)
    print(result.failed)
"""

from toylens.sweep.runner import SweepFailed, SweepResult, format_table, run_sweep
from toylens.sweep.spec import Member, SweepSpec, expand, load_sweep

__all__ = ["Member", "SweepFailed", "SweepResult", "SweepSpec", "expand", "format_table", "load_sweep", "run_sweep"]
