"""The run directory: every stage reads the run through this package and writes its own folder in it.

    from toylens.rundir import RunDir, load, resolve
    run = RunDir("runs/sort-no-decay")
    [c.name for c in resolve(run, "all")]          # every checkpoint, in training order
    loaded = load(run, "best")                      # model, config, task

The rooms: `layout` (where each file is, checkpoint names), `run` (`RunDir`: checksummed atomic
files and the manifest), `checkpoints` (what `final`, `best`, `3`, `all` mean; weights files),
`lock` (one writer per run), `load` (a model back, verified), `results` (typed results saved as
JSON + safetensors). Files are written by `toylens.storage` (atomic writes, safetensors without
pickle), the floor below.
"""

from toylens.rundir.checkpoints import (
    ALL,
    BEST,
    FINAL,
    HELP,
    Spec,
    available,
    items,
    read_weights,
    resolve,
    resolve_one,
    write_weights,
)
from toylens.rundir.layout import (
    FINAL_WEIGHTS,
    SUMMARY,
    CheckpointInfo,
    epoch_name,
    state_file,
    step_name,
    weights_file,
)
from toylens.rundir.load import Loaded, UnverifiedFile, load, read_file
from toylens.rundir.lock import LOCK, RunLocked, run_lock
from toylens.rundir.results import Result, has_result, load_result
from toylens.rundir.run import RunDir, RunLike, as_rundir

__all__ = [
    "ALL",
    "BEST",
    "FINAL",
    "FINAL_WEIGHTS",
    "HELP",
    "LOCK",
    "SUMMARY",
    "CheckpointInfo",
    "Loaded",
    "Result",
    "RunDir",
    "RunLike",
    "RunLocked",
    "Spec",
    "UnverifiedFile",
    "as_rundir",
    "available",
    "epoch_name",
    "has_result",
    "items",
    "load",
    "load_result",
    "read_file",
    "read_weights",
    "resolve",
    "resolve_one",
    "run_lock",
    "state_file",
    "step_name",
    "weights_file",
    "write_weights",
]
