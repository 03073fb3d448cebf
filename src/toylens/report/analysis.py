"""Reading a run's saved analysis results (`toylens analyze`) for the report.

    RUN/analysis/<checkpoint>/summary.json     which results a checkpoint has
    RUN/analysis/<checkpoint>/<result>.json    one result (+ .safetensors with its arrays)
    RUN/analysis/trajectory.json               every checkpoint's headline scalars, by step

Results are read with the analysis package's own `load_result` (typed dataclasses; every file
verified against the run's manifest). The report shows everything at one "focus" checkpoint per
run and the small per-checkpoint results (head scores, sparsity, attention examples) at every
analysed checkpoint. The focus is the checkpoint `toylens report --checkpoint` names (final, best,
3, epoch-0003: it must have been analysed), by default the last analysed one, which is the final
checkpoint whenever that was analysed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toylens.errors import ToylensError
from toylens.report.collect import RunResults
from toylens.rundir import CheckpointInfo, RunDir, Spec, resolve_one

if TYPE_CHECKING:  # imported when reading, so that the report module loads without the analysis package
    from toylens.analysis.summary import CheckpointSummary, Trajectory

# Per-checkpoint results read for the curves over training (all small).
OVER_TRAINING = ("head_scores/task", "head_scores/repeated", "sparsity", "attention/task", "attention/repeated")


@dataclass
class AnalysedCheckpoint:
    name: str
    epoch: int
    step: int
    results: dict[str, Any] = field(default_factory=dict)
    """Result name (e.g. "head_scores/task") -> the loaded result."""


@dataclass
class AnalysisResults:
    focus: AnalysedCheckpoint
    """The checkpoint whose every result is shown (circuits, patching, ablations ...)."""
    checkpoints: list[AnalysedCheckpoint]
    """Every analysed checkpoint in training order."""
    trajectory: Trajectory | None
    """The analysis package's `Trajectory` (scalars[name][i] at checkpoints[i]), when written."""

    def at_focus(self, name: str) -> Any | None:
        """The focus checkpoint's result `name`, or None when it has none."""
        return self.focus.results.get(name)

    def focus_result(self, name: str) -> Any:
        """The focus checkpoint's result `name`, where the caller knows it is there (KeyError if not)."""
        return self.focus.results[name]


def read_analysis(run: RunDir, checkpoints: list[str], focus: Spec | None = None) -> AnalysisResults | None:
    """The run's analysis results, or None when it has none (or this build cannot read them).
    `focus` names the checkpoint shown in full (default: the last analysed)."""
    wanted = resolve_one(run, focus, "report") if focus is not None else None  # a bad spec fails for every run
    names = [n for n in checkpoints if run.has(f"analysis/{n}/summary.json")]
    if not names:
        return None
    from toylens.analysis.summary import CheckpointSummary, Trajectory
    from toylens.rundir.results import load_result

    summaries = {n: CheckpointSummary.load(run, f"analysis/{n}/summary") for n in names}
    ordered = sorted(names, key=lambda n: summaries[n].step)
    focus_name = _focus_of(run, summaries, ordered, wanted)
    shown = AnalysedCheckpoint(
        focus_name,
        summaries[focus_name].epoch,
        summaries[focus_name].step,
        {r: load_result(run, f"analysis/{focus_name}/{r}") for r in summaries[focus_name].results},
    )
    series = []
    for name in ordered:
        s = summaries[name]
        kept = [r for r in OVER_TRAINING if r in s.results]
        series.append(
            AnalysedCheckpoint(name, s.epoch, s.step, {r: load_result(run, f"analysis/{name}/{r}") for r in kept})
        )
    trajectory = Trajectory.load(run, "analysis/trajectory") if run.has("analysis/trajectory.json") else None
    return AnalysisResults(shown, series, trajectory)


def _focus_of(
    run: RunDir, summaries: dict[str, CheckpointSummary], ordered: list[str], wanted: CheckpointInfo | None
) -> str:
    """The analysed checkpoint to show in full: `wanted`, or the last analysed."""
    if wanted is None:
        return ordered[-1]
    if wanted.name in summaries:
        return wanted.name
    raise ToylensError(
        f"{run.path}: checkpoint {wanted.name} has no analysis results (analysed: "
        f"{', '.join(ordered)}); run toylens analyze {run.path} --checkpoint {wanted.name}"
    )


def analysis_of(run: RunResults) -> AnalysisResults | None:
    return run.extras.get("analysis")


def with_analysis(runs: list[RunResults]) -> list[tuple[int, RunResults, AnalysisResults]]:
    """(colour index, run, its analysis) for every run that has analysis results."""
    return [(i, r, a) for i, r in enumerate(runs) if (a := analysis_of(r)) is not None]


def missing_note(runs: list[RunResults], have: list[Any], what: str) -> str:
    """A note naming the runs without these results (empty when every run has them)."""
    names = {r.label for _, r, _ in have}
    missing = [r.label for r in runs if r.label not in names]
    return f"No {what} for: {', '.join(missing)}." if missing else ""


def head_labels(n_layers: int, n_heads: int) -> list[str]:
    return [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]


def analysis_summary_rows(runs: list[RunResults]) -> list[list[Any]]:
    """Summary-table rows from the focus checkpoint: MLP sparsity and the strongest heads."""
    have = with_analysis(runs)
    if not have:
        return []
    rows: list[list[Any]] = [["analysed checkpoint", *[_focus_name(r) for r in runs]]]
    n_layers = max((int(s.fraction_active.numel()) for _, _, a in have if (s := a.at_focus("sparsity"))), default=0)
    for layer in range(n_layers):
        rows.append(
            [f"MLP {layer}: fraction of neurons active", *[_sparsity(r, layer, "fraction_active") for r in runs]]
        )
        rows.append([f"MLP {layer}: dead neurons (fraction)", *[_sparsity(r, layer, "dead_fraction") for r in runs]])
        rows.append([f"MLP {layer}: mean L1 of activations", *[_sparsity(r, layer, "l1") for r in runs]])
    rows.append(["best OV copying score (head)", *[_best_copying(r) for r in runs]])
    return rows


def _focus_name(run: RunResults) -> str | None:
    a = analysis_of(run)
    return f"{a.focus.name} (step {a.focus.step})" if a else None


def _sparsity(run: RunResults, layer: int, field_name: str) -> float | None:
    a = analysis_of(run)
    s = a.at_focus("sparsity") if a else None
    values = getattr(s, field_name).tolist() if s is not None else []
    return values[layer] if layer < len(values) else None


def _best_copying(run: RunResults) -> str | None:
    a = analysis_of(run)
    c = a.at_focus("circuits") if a else None
    if c is None:
        return None
    flat = c.copying.flatten()
    i = int(flat.nan_to_num(float("-inf")).argmax())
    return f"{float(flat[i]):.3g} ({head_labels(*c.copying.shape)[i]})"
