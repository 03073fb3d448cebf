"""`load`: a model back from a run directory or a checkpoint file, every byte verified.

    run = toylens.load("runs/sort-no-decay")                         # final checkpoint
    run = toylens.load("runs/sort-no-decay", 3)                      # epoch 3
    run = toylens.load("runs/sort-no-decay/checkpoints/epoch-0003.safetensors")
    run.model, run.config, run.task, run.epoch, run.step

A checkpoint file named directly is verified against the manifest of the run directory it sits
in (`final.safetensors`, `checkpoints/...`), so a tampered file is refused whichever way it is
named. A file outside any run directory cannot be verified (safetensors from elsewhere carry no
checksum): it is read, never unpickled, and a warning says once that it was not verified.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from toylens.config import RunConfig, validate_config
from toylens.device import DeviceLike, resolve_device
from toylens.errors import ToylensError
from toylens.rundir.checkpoints import Spec, read_weights, resolve_one
from toylens.rundir.run import RunDir, RunLike, as_rundir, enclosing_run
from toylens.storage import read_safetensors

if TYPE_CHECKING:
    from toylens.model import Transformer
    from toylens.tasks import Task


class UnverifiedFile(UserWarning):
    """A file read from outside any run directory: no manifest vouches for its contents."""


_warned: set[Path] = set()  # files this process has already said it could not verify


class Loaded:
    """A model restored from a run: `.model`, `.config`, `.task` (built on first use), `.meta`,
    and `.device`, where the model is (inputs go there: `batch.to(run.device)`)."""

    def __init__(self, model: Transformer, config: RunConfig, meta: dict, run: RunDir | None):
        self.model, self.config, self.meta, self.run = model, config, meta, run

    @functools.cached_property
    def task(self) -> Task:
        """The run's task: built from its config, with what the run saved of it (`task/`, e.g. a
        compact vocabulary's mapping). From a lone checkpoint file it is fitted to the data again."""
        from toylens.tasks import build_task

        return build_task(self.config.task, self.run.task_files() if self.run is not None else None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def epoch(self) -> int:
        return self.meta.get("epoch", -1)

    @property
    def step(self) -> int:
        return self.meta.get("step", -1)

    def __repr__(self) -> str:
        return f"Loaded({self.config.name!r}, epoch={self.epoch}, step={self.step})"


def read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], RunDir | None]:
    """A safetensors file named by its path: (tensors, metadata, the run it belongs to). Inside a
    run directory it is verified against that run's manifest (and refused if it is not listed);
    outside one it is read as it is, with an `UnverifiedFile` warning (once per file and process)."""
    path = Path(path)
    found = enclosing_run(path)
    if found is None:
        if not path.is_file():
            raise ToylensError(f"{path}: file not found")
        if path.absolute() not in _warned:
            _warned.add(path.absolute())
            warnings.warn(
                f"{path}: not inside a toylens run directory, so its contents could not be verified against a manifest",
                UnverifiedFile,
                stacklevel=3,
            )
        tensors, meta = read_safetensors(path)
        return tensors, meta, None
    run, rel = found
    tensors, meta = run.read_tensors(rel)
    return tensors, meta, run


def load(run: RunLike, checkpoint: Spec = "final", device: DeviceLike = "auto") -> Loaded:
    """The model at a checkpoint of a run, with its config and task, on `device` ("auto": cuda
    when available, else cpu).

    `run` is a run directory or a single `.safetensors` checkpoint file (which carries its config
    in its metadata); either way every byte is verified against the run's manifest (see the module
    docstring). `checkpoint` is one checkpoint in the vocabulary of `rundir.checkpoints`: "final",
    "best", an epoch number, or a name such as "step-000120".
    """
    from toylens.model import Transformer

    dev = resolve_device(device)
    path = Path(run)
    if path.suffix == ".safetensors" and not isinstance(run, RunDir):
        tensors, meta, rundir = read_file(path)
    else:
        rundir = as_rundir(run)
        tensors, meta = read_weights(rundir, resolve_one(rundir, checkpoint, "load"))
    if "config" not in meta:
        raise ToylensError(f"{path}: checkpoint has no toylens config in its metadata")
    cfg = validate_config(meta["config"], f"{path} (checkpoint metadata)")
    model = Transformer(cfg.model, seed=None)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ToylensError(
            f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.to(dev).eval()
    return Loaded(model, cfg, meta, rundir)
