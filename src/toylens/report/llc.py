"""The LLC section: λ̂ of every checkpoint with error bars, the train loss beside it, the
sampler's diagnostics, and the loss traces of the last estimate.

Reads the whole model's estimates (the restriction `all`, see `toylens.llc.store`):
`RUN/llc/all/<checkpoint>.json` (one per checkpoint: "llc", "llc_se", "llc_std", "train_loss",
"acceptance", "converged", "warnings", the settings ...), the traces ("loss" [chains, steps]) of the
last estimated checkpoint, and its calibration when the sampler was calibrated; all written by
`toylens llc` and `toylens llc calibrate`. The other restrictions are the Development section's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toylens.llc.store import WHOLE, read_calibrations, read_estimates, read_traces
from toylens.report.collect import RunResults
from toylens.report.figures import LineFigure, Section, Series, Table
from toylens.rundir import RunDir

MAX_TRACE_POINTS = 300  # per chain; a trace is thinned to this many points for the page


@dataclass
class LLCResults:
    estimates: list[dict[str, Any]]
    """Per-checkpoint summaries in training order."""
    last_trace: list[list[float]] | None
    """Loss trace [chain][step] of the last estimate, thinned."""
    calibration: dict[str, Any] | None
    """The whole model's stored calibration ("checkpoint", "grid", "chosen"), if it was calibrated."""

    @property
    def last(self) -> dict[str, Any]:
        return self.estimates[-1]


def read_llc(run: RunDir, checkpoints: list[str]) -> LLCResults | None:
    """The run's whole-model LLC results, or None when `toylens llc` has not estimated them."""
    wanted = set(checkpoints)
    estimates = [e for e in read_estimates(run, WHOLE).get(WHOLE, []) if e["checkpoint"] in wanted]
    if not estimates:
        return None
    trace = None
    traces = read_traces(run, WHOLE, estimates[-1]["checkpoint"])
    loss = None if traces is None else traces.get("loss")
    if loss is not None and loss.ndim == 2:
        stride = max(1, loss.shape[1] // MAX_TRACE_POINTS)
        trace = loss[:, ::stride].double().tolist()
    return LLCResults(estimates, trace, read_calibrations(run).get(WHOLE))


def llc_of(run: RunResults) -> LLCResults | None:
    return run.extras.get("llc")


def llc_summary_rows(runs: list[RunResults]) -> list[list[Any]]:
    """λ̂ and its standard error at each run's last estimated checkpoint; an estimate with warnings
    is not shown as a number (the LLC section says why), so that no unhealthy λ̂ reads as a result."""
    if not any(llc_of(r) for r in runs):
        return []
    values = [res.last if (res := llc_of(r)) else None for r in runs]
    return [
        ["LLC λ̂ (last estimated checkpoint)", *[_headline(v, "llc") for v in values]],
        ["LLC standard error", *[_headline(v, "llc_se") for v in values]],
    ]


def _headline(estimate: dict[str, Any] | None, key: str) -> Any:
    if estimate is None:
        return None
    return "not healthy (see LLC section)" if estimate.get("warnings") else estimate.get(key)


def unhealthy_note(have: list[tuple[int, RunResults, LLCResults]]) -> str:
    """One sentence per run whose last estimate has warnings: at these settings it is no result."""
    return " ".join(
        f"{run.label}: no healthy LLC estimate at this size and these settings "
        f"({res.last['checkpoint']}: {res.last['warnings'][0]}), so its λ̂ is shown for diagnosis only."
        for _, run, res in have
        if res.last.get("warnings")
    )


def llc_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, res) for i, r in enumerate(runs) if (res := llc_of(r))]
    if not have:
        return None
    llc = [Series(r.label, _col(res, "step"), _col(res, "llc"), err=_col(res, "llc_se"), color=i) for i, r, res in have]
    loss = [Series(r.label, _col(res, "step"), _col(res, "train_loss"), color=i) for i, r, res in have]
    blocks: list[Any] = [
        LineFigure(
            "llc",
            "Local learning coefficient λ̂",
            "step",
            "λ̂",
            llc,
            guide="Higher λ̂ means a less degenerate, effectively more complex solution; "
            "error bars are ± one standard error over the SGLD chains.",
        ),
        LineFigure(
            "llc-train-loss",
            "Train loss at each checkpoint",
            "step",
            "train loss",
            loss,
            log_y=True,
            guide="The loss the LLC is measured around: read λ̂ together with it.",
        ),
    ]
    blocks += [_trace_figure(i, r, res, trace) for i, r, res in have if (trace := res.last_trace)]
    blocks.append(_diagnostics_table(have))
    missing = [r.label for r in runs if not llc_of(r)]
    guide = (
        "λ̂ of every checkpoint, estimated by localised SGLD around its weights with settings calibrated per "
        "run; compare runs only through estimates whose diagnostics are healthy."
    )
    note = " ".join(
        filter(None, [f"No LLC results for: {', '.join(missing)}." if missing else "", unhealthy_note(have)])
    )
    return Section("llc", "Local learning coefficient over training", guide, blocks, note)


def _trace_figure(i: int, run: RunResults, res: LLCResults, trace: list[list[float]]) -> LineFigure:
    """The loss of each chain in `trace`, the last estimate's (res.last)."""
    series = [Series(f"chain {c}", list(range(len(t))), t, color=c) for c, t in enumerate(trace)]
    return LineFigure(
        f"llc-trace-{i}",
        f"SGLD loss traces, {run.label} ({res.last['checkpoint']})",
        "sample (thinned)",
        "minibatch loss",
        series,
        small=True,
        guide="Healthy chains rise from the checkpoint's loss and then stay flat.",
    )


def _diagnostics_table(have: list[tuple[int, RunResults, LLCResults]]) -> Table:
    rows = []
    for _, run, res in have:
        last = res.last
        warned = [e for e in res.estimates if e.get("warnings")]
        first_warning = next((f"{e['checkpoint']}: {e['warnings'][0]}" for e in warned), "")
        rows.append(
            [
                run.label,
                len(res.estimates),
                last.get("epsilon"),
                last.get("gamma"),
                last.get("nbeta"),
                (last.get("settings") or {}).get("chains"),
                (last.get("settings") or {}).get("draws"),
                last.get("acceptance"),
                sum(bool(e.get("converged")) for e in res.estimates),
                "yes" if res.calibration and res.calibration.get("chosen") is not None else "no",
                len(warned),
                first_warning,
            ]
        )
    columns = [
        "run",
        "checkpoints",
        "ε",
        "γ",
        "nβ",
        "chains",
        "draws",
        "acceptance (last)",
        "converged",
        "calibrated",
        "with warnings",
        "first warning",
    ]
    return Table(
        "llc-diagnostics",
        columns,
        rows,
        title="Sampler settings and diagnostics",
        guide="Acceptance is the MALA acceptance of the SGLD steps (healthy well above 0.5); converged "
        "counts estimates that move under 5% when the draws are doubled.",
    )


def _col(res: LLCResults, key: str) -> list[Any]:
    return [e.get(key) for e in res.estimates]
