"""The checkpoint vocabulary: what a user's checkpoint spec means, and a checkpoint's weights file.

Names, as a run directory registers them in its manifest (`rundir.layout`) and as stored results
are keyed (RUN/analysis/<name>/, RUN/llc/<restriction>/<name>.json,
RUN/export/transformer-lens/<name>.safetensors):

    epoch-0003      the weights after epoch 3 (epoch-0000 is the initialisation)
    step-000120     an extra checkpoint at optimisation step 120 (`train.log_checkpoints`)

A spec, the same on every command (`--checkpoint` of analyze, llc, llc calibrate, export and
report) and in Python (`checkpoint=` of `toylens.load`, `analyze`, `llc_over_checkpoints`, ...):

    final           the last epoch checkpoint of a finished run (summary.json written)
    best            the epoch checkpoint with the best selection metric (summary.json "best")
    3               an epoch number: epoch-0003
    epoch-0003      a checkpoint by name (step-000120, ...)
    all             every registered checkpoint in training order; the final one is among them
    3,5             a list of the forms above (or a Python list [3, "step-000120"]): in the
                    order given, each checkpoint once

`final` and `best` are aliases: they resolve to a registered checkpoint, and results are stored
under its name, so the same weights are never analysed or sampled twice. `final.safetensors` in
the run directory holds the same weights as the final checkpoint, as one file that loads on its
own (`toylens.load("RUN/final.safetensors")`). Commands that act on one checkpoint (llc
calibrate, export, report, `toylens.load`) refuse `all` and lists with one line.

    from toylens.rundir import RunDir, resolve
    [c.name for c in resolve(RunDir("runs/sort-no-decay"), "0,final")]   # ["epoch-0000", "epoch-0012"]

A weights file is safetensors with the run's config, epoch and step in its metadata
(`WEIGHTS_FORMAT`), so that it rebuilds its model alone (`toylens.load`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from toylens.config import RunConfig
from toylens.errors import ToylensError
from toylens.rundir.layout import SUMMARY, CheckpointInfo, epoch_name
from toylens.rundir.run import RunDir

FINAL, BEST, ALL = "final", "best", "all"
WEIGHTS_FORMAT = "toylens-checkpoint/1"

Spec = str | int | Sequence[str | int]
"""A checkpoint spec: "final", "best", "all", an epoch number, a name, or a list ("3,5", [3, 5])."""

HELP = (
    "Checkpoint: final (the last epoch of a finished run), best, an epoch number (3), "
    "a name (epoch-0003, step-000120), all, or a list (3,5 or epoch-0003,step-000120). "
    "all and lists only where several checkpoints make sense (analyze, llc)."
)
"""The help text of every command's --checkpoint option."""


def write_weights(
    run: RunDir, rel: str, weights: dict[str, torch.Tensor], cfg: RunConfig, *, epoch: int, step: int
) -> None:
    """A weights file: the tensors, with the config, epoch and step in its metadata."""
    meta = {"format": WEIGHTS_FORMAT, "config": cfg.model_dump(mode="json"), "epoch": epoch, "step": step}
    run.write_tensors(rel, weights, meta)


def read_weights(run: RunDir, ckpt: CheckpointInfo) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A registered checkpoint's weights and metadata, verified against the run's manifest."""
    return run.read_tensors(ckpt.file)


def items(spec: Spec, label: str = "checkpoint") -> list[str]:
    """The items of a spec, checked for form only (no run needed): "3,5" -> ["3", "5"].
    `label` starts the error messages (a study file names its field there)."""
    where = f"{label} {_shown(spec)}"
    if isinstance(spec, bool) or not isinstance(spec, (str, int, Sequence)):
        raise ToylensError(f"{where}: expected {_FORMS}")
    if isinstance(spec, int):
        return [str(spec)]
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (str, int)):
            raise ToylensError(f"{where}: item {part!r} is not a checkpoint; expected {_FORMS}")
        item = str(part).strip()
        if not item:
            raise ToylensError(f"{where}: empty item; expected {_FORMS}")
        if item == ALL and len(parts) > 1:
            raise ToylensError(f"{where}: all already names every checkpoint; it cannot be in a list")
        out.append(item)
    if not out:
        raise ToylensError(f"{where}: empty; expected {_FORMS}")
    return out


def resolve(run: RunDir, spec: Spec) -> list[CheckpointInfo]:
    """The registered checkpoints a spec names, in the order given (training order for all)."""
    wanted = items(spec)
    if wanted == [ALL]:
        return run.checkpoints()
    known = {c.name: c for c in run.checkpoints()}
    chosen: dict[str, CheckpointInfo] = {}
    for item in wanted:
        name = _name_of(run, item)
        if name not in known:
            shown = f" (from {item!r})" if name != item else ""
            raise ToylensError(f"{run.path}: no checkpoint {name!r}{shown}; {available(run)}")
        chosen.setdefault(name, known[name])
    return list(chosen.values())


def resolve_one(run: RunDir, spec: Spec, command: str = "this command") -> CheckpointInfo:
    """The one checkpoint a spec names; `all` or a list of several is refused, naming `command`."""
    wanted = items(spec)
    if wanted == [ALL] or len(wanted) > 1:
        raise ToylensError(
            f"checkpoint {_shown(spec)}: {command} takes one checkpoint "
            f"(final, best, an epoch number or a name); {available(run)}"
        )
    return resolve(run, wanted)[0]


def final_name(run: RunDir) -> str:
    """The final checkpoint's name: the last epoch checkpoint of a finished run."""
    name = _final(run)
    if name is None:
        raise ToylensError(
            f"{run.path}: no final checkpoint, training has not finished (no summary.json); {available(run)}"
        )
    return name


def best_name(run: RunDir) -> str:
    """The best checkpoint's name, as training recorded it in summary.json."""
    best = run.read_json(SUMMARY).get("best") if _finished(run) else None
    if not best:
        raise ToylensError(f"{run.path}: no best checkpoint recorded (has training finished?); {available(run)}")
    return str(best["checkpoint"])


def available(run: RunDir) -> str:
    """What a run offers, for error messages: "available: epoch-0000, ...; final = epoch-0012, best = ..."."""
    names = [c.name for c in run.checkpoints()]
    if not names:
        return "available: none"
    shown = ", ".join(names) if len(names) <= 8 else ", ".join([*names[:3], "...", *names[-3:]]) + f" ({len(names)})"
    if not _finished(run):
        return f"available: {shown} (final and best once training has finished)"
    best = run.read_json(SUMMARY).get("best") or {}
    aliases = [f"final = {_final(run)}"] + ([f"best = {best['checkpoint']}"] if best else [])
    return f"available: {shown}; {', '.join(aliases)}"


def _name_of(run: RunDir, item: str) -> str:
    if item == FINAL:
        return final_name(run)
    if item == BEST:
        return best_name(run)
    return epoch_name(int(item)) if item.isdigit() else item


def _final(run: RunDir) -> str | None:
    epochs = [c.name for c in run.checkpoints() if c.name == epoch_name(c.epoch)]
    return epochs[-1] if epochs and _finished(run) else None


def _finished(run: RunDir) -> bool:
    return run.has(SUMMARY)


def _shown(spec: object) -> str:
    return repr(",".join(map(str, spec)) if isinstance(spec, (list, tuple)) else spec)


_FORMS = "final, best, all, an epoch number, a checkpoint name, or a list of these (3,5)"
