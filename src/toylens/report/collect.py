"""Read everything a report shows from run directories: saved results only, never the model.

    runs = collect_runs(["runs/sort-no-decay", "runs/sort-high-decay"])
    runs[0].metrics          # metrics.jsonl rows
    runs[0].weight_norms     # per checkpoint: Frobenius norm of every saved parameter

Every file is read through `RunDir`, so a missing, truncated or altered file is refused with a
one-line message naming it. Results a run does not have (no summary yet, analysis not run) are
left empty; the report leaves their sections out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toylens.errors import ToylensError
from toylens.rundir import CheckpointInfo, RunDir


@dataclass
class CheckpointNorms:
    """Weight norms of one checkpoint, read from its safetensors file."""

    name: str
    epoch: int
    step: int
    norms: dict[str, float]
    """Frobenius norm of every parameter, by parameter name (e.g. blocks.0.attn.W_Q)."""
    n_params: int

    @property
    def total(self) -> float:
        """L2 norm of all parameters together."""
        return math.sqrt(sum(n * n for n in self.norms.values()))


@dataclass
class RunResults:
    """What a report can show about one run."""

    label: str
    path: Path
    config: dict[str, Any]
    """The resolved config as saved in config.yaml (JSON types)."""
    metrics: list[dict[str, Any]]
    """metrics.jsonl rows: one per evaluation, epoch 0 = initialisation."""
    summary: dict[str, Any] | None
    """summary.json (final and best metrics), None while training is unfinished."""
    checkpoints: list[CheckpointInfo]
    weight_norms: list[CheckpointNorms] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    """Results of later pipeline stages (analysis, llc), keyed by stage, when the run has them."""

    @property
    def task(self) -> str:
        return str(self.config["task"]["name"])

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation row (the summary's final row once training has finished)."""
        if self.summary is not None:
            return self.summary["final"]
        return self.metrics[-1] if self.metrics else {}

    def architecture(self) -> str:
        """A short description such as "2L attn-only, 4 heads, d_model 128"."""
        m = self.config["model"]
        kind = "attn-only" if m.get("attn_only") else f"MLP {m.get('d_mlp')}"
        ln = ", LN" if m.get("normalization") == "LN" else ""
        return f"{m['n_layers']}L {kind}, {m['n_heads']} heads, d_model {m['d_model']}{ln}"


# A reader gets the run and its checkpoint names (training order) and returns its stage's results,
# or None when the run has none; they land in RunResults.extras under the reader's key.
Reader = Callable[[RunDir, list[str]], Any]


def collect_runs(paths: Sequence[str | Path], readers: dict[str, Reader] | None = None) -> list[RunResults]:
    """Collect every run; labels are the run names, made unique with their parent folder."""
    if not paths:
        raise ToylensError("report: give at least one run directory")
    runs = [collect(p, readers) for p in paths]
    names = [r.label for r in runs]
    for run in runs:
        if names.count(run.label) > 1:
            run.label = f"{run.path.parent.name}/{run.path.name}"
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):
        raise ToylensError(f"report: the same run is given twice ({', '.join(labels)})")
    return runs


def collect(path: str | Path, readers: dict[str, Reader] | None = None) -> RunResults:
    """The saved results of one run directory (verified reads only)."""
    run = RunDir(path)
    if not run.exists():
        run.manifest()  # raises the one-line "not found" / "not a run directory" message
    config = _read_config(run)
    results = RunResults(
        label=str(config.get("name") or run.path.name),
        path=run.path,
        config=config,
        metrics=run.read_jsonl("metrics.jsonl"),
        summary=run.read_json("summary.json") if run.has("summary.json") else None,
        checkpoints=run.checkpoints(),
    )
    results.weight_norms = [_checkpoint_norms(run, c) for c in results.checkpoints]
    names = [c.name for c in results.checkpoints]
    for key, read in (readers or {}).items():
        found = read(run, names)
        if found is not None:
            results.extras[key] = found
    return results


def _read_config(run: RunDir) -> dict[str, Any]:
    """config.yaml as plain data; validated so that a hand-edited file is caught here."""
    return run.config().model_dump(mode="json")


def _checkpoint_norms(run: RunDir, ckpt: CheckpointInfo) -> CheckpointNorms:
    tensors, _ = run.read_tensors(ckpt.file)
    params = {name: t for name, t in tensors.items() if t.is_floating_point()}
    norms = {name: float(t.double().norm()) for name, t in params.items()}
    return CheckpointNorms(ckpt.name, ckpt.epoch, ckpt.step, norms, sum(t.numel() for t in params.values()))
