"""Saved results of one or more runs -> one self-contained HTML report (and PNG figures).

    import toylens
    result = toylens.report(["runs/sort-no-decay", "runs/sort-high-decay"], "report.html")
    result.path, result.pngs, result.sections

    toylens report runs/sort-no-decay runs/sort-high-decay -o report.html
    toylens report runs/sort-weight-decay -o sweep.html      # a sweep: its members + a ranked member table

The report reads only files in the run directories (verified against each run's manifest), never
runs a model. Each section appears only when some run has its results; a section that applies to
some runs only says which runs lack it. The page needs no network: its styles, script and data
are inline, and its Content-Security-Policy forbids loading anything else.

Modules: `collect` (run directories -> `RunResults`), then the sections in page order, each
from saved results to figures and tables: `overview` (summary table, training curves, weight
norms), `analysis` (reading a run's analysis results), `mechanisms` (attention, circuits,
composition, attribution, ablation), `patching`, `circuit_graph`, `text_heads`, `trajectories`
(analysis metrics over training), `llc` (the whole model's LLC), `development` (stages, essential
dynamics, the per-head LLC), `sweep`; `BUILDERS` below lists them one line each. Then `figures`
(the figure specifications), `html` (the page), `svg` (circuit graphs as inline SVG), `png` (the
same figures as PNG files), `assets/` (template, stylesheet, script).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from toylens.config import config_to_yaml, validate_config
from toylens.errors import ToylensError
from toylens.report.analysis import analysis_summary_rows, read_analysis
from toylens.report.circuit_graph import circuit_graph_section
from toylens.report.collect import Reader, RunResults, collect_runs
from toylens.report.development import development_section, mark_stages, read_development
from toylens.report.figures import Code, Section
from toylens.report.html import render_html
from toylens.report.llc import llc_section, llc_summary_rows, read_llc
from toylens.report.mechanisms import (
    ablation_section,
    attention_section,
    attribution_section,
    circuits_section,
    composition_section,
)
from toylens.report.overview import summary_section, training_section, weights_section
from toylens.report.patching import patching_section
from toylens.report.png import write_pngs
from toylens.report.sweep import SweepSummary, expand_sweeps, sweep_section
from toylens.report.text_heads import text_heads_section, text_heads_summary_rows
from toylens.report.trajectories import head_scores_section, sparsity_section, trajectory_section
from toylens.rundir import RunDir, RunLike, Spec
from toylens.storage import atomic_write

log = logging.getLogger("toylens")

__all__ = ["ReportResult", "build_sections", "report"]


@dataclass
class ReportResult:
    path: Path
    """The HTML file."""
    pngs: list[Path]
    """The figures as PNG files, in the folder beside the report (`<stem>_figures/`)."""
    sections: list[str]
    """Ids of the sections the report contains, in order."""


def report(
    runs: RunLike | Sequence[RunLike],
    out: str | Path = "report.html",
    *,
    title: str | None = None,
    png: bool = True,
    checkpoint: Spec | None = None,
) -> ReportResult:
    """Write the report on `runs` to `out` (and its figures as PNGs beside it, unless png=False).
    `runs` is one run or a list; a sweep directory stands for its finished members.

    `checkpoint` (final, best, 3, epoch-0003; see `toylens.rundir.checkpoints`) picks, in every run, the
    analysed checkpoint whose results are shown in full; by default the last analysed one."""
    paths, sweeps = expand_sweeps([Path(r) for r in ([runs] if isinstance(runs, (str, os.PathLike, RunDir)) else runs)])
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ToylensError(f"-o {out}: the report is an HTML file; give a name ending in .html")
    if out.is_dir():
        raise ToylensError(f"-o {out}: is a directory; give a file name such as {out / 'report.html'}")
    readers: dict[str, Reader] = {**READERS, "analysis": functools.partial(read_analysis, focus=checkpoint)}
    results = collect_runs(paths, readers)
    sections = build_sections(results, sweeps)
    title = title or ("Report: " + ", ".join(r.label for r in results))
    meta = (
        f"{len(results)} run{'s' * (len(results) > 1)} · written {time.strftime('%Y-%m-%d %H:%M')} · "
        f"figures also as PNG in {out.stem}_figures/"
        if png
        else f"{len(results)} runs"
    )
    atomic_write(out, render_html(title, meta, sections).encode("utf-8"))
    pngs = write_pngs(sections, out.parent / f"{out.stem}_figures") if png else []
    log.info("report: %s (%d sections, %d PNG figures)", out, len(sections), len(pngs))
    return ReportResult(out, pngs, [s.id for s in sections])


# Results of later pipeline stages, read when a run has them (RunResults.extras[key]).
READERS: dict[str, Reader] = {"analysis": read_analysis, "llc": read_llc, "development": read_development}

# Section builders after the summary, in page order; each returns None when no run has its results.
BUILDERS: list[Callable[[list[RunResults]], Section | None]] = [
    training_section,
    weights_section,
    sparsity_section,
    llc_section,
    head_scores_section,
    development_section,
    attention_section,
    text_heads_section,
    circuits_section,
    composition_section,
    attribution_section,
    patching_section,
    circuit_graph_section,
    ablation_section,
    trajectory_section,
]


def build_sections(runs: list[RunResults], sweeps: Sequence[SweepSummary] = ()) -> list[Section]:
    """The summary, the sweep tables, every section that some run has results for, the configs."""
    extra = analysis_summary_rows(runs) + text_heads_summary_rows(runs) + llc_summary_rows(runs)
    summary = summary_section(runs, extra_rows=extra)
    sections = [s for s in (build(runs) for build in BUILDERS) if s is not None]
    mark_stages(sections, runs)  # every run's stage boundaries on every chart over steps
    sweep = sweep_section(list(sweeps))
    return [summary, *([sweep] if sweep else []), *sections, configs_section(runs)]


def configs_section(runs: list[RunResults]) -> Section:
    blocks = [
        Code(f"config-{i}", f"{r.label}: {r.path}", config_to_yaml(validate_config(r.config)))
        for i, r in enumerate(runs)
    ]
    return Section(
        "configs",
        "Configs",
        "The resolved config of each run, as saved in its run directory (click a run to unfold it).",
        blocks,
    )
