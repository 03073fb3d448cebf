"""Sections of analysis metrics over training: every head's scores at every analysed checkpoint,
MLP activation sparsity, and every other headline scalar the analysis records per checkpoint
(copying, composition, ablation, logit lens, patching ...). Runs share a colour across figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from toylens.report.analysis import AnalysisResults, head_labels, missing_note, with_analysis
from toylens.report.collect import RunResults
from toylens.report.figures import Heatmap, HeatmapFigure, LineFigure, Section, Series

DATASETS = {"head_scores/task": "task data", "head_scores/repeated": "repeated random tokens"}
# Trajectory scalars already drawn elsewhere (or not numbers).
SHOWN_ELSEWHERE = ("head_scores/", "sparsity/", "weight_norms/")


def head_scores_section(runs: list[RunResults]) -> Section | None:
    have = with_analysis(runs)
    figures: list[Any] = []
    for rel, dataset in DATASETS.items():
        scores = sorted(
            {k for _, _, a in have for c in a.checkpoints if rel in c.results for k in c.results[rel].scores}
        )
        for score in scores:
            series = head_series(have, rel, score)
            if series:
                figures.append(
                    LineFigure(
                        f"{rel.replace('/', '-')}-{score}",
                        f"{score.replace('_', '-')} score ({dataset})",
                        "step",
                        "score",
                        series,
                        guide=_description(have, rel, score),
                        small=True,
                    )
                )
    by_pos = _next_output_by_position(have)
    if by_pos is not None:
        figures.append(by_pos)
    if not figures:
        return None
    guide = (
        "Each head's attention scores at every analysed checkpoint: a score near 1 means the head puts nearly "
        "all its attention where the named relation points, so a sudden rise marks a head forming."
    )
    return Section(
        "head-scores", "Head scores over training", guide, figures, missing_note(runs, have, "analysis results")
    )


def head_series(have: list[tuple[int, RunResults, AnalysisResults]], rel: str, score: str) -> list[Series]:
    """One line per (run, head); colour by run and line style by head when heads are few."""
    out = []
    for i, run, a in have:
        points = [
            (c.step, c.results[rel].scores[score].flatten().tolist())
            for c in a.checkpoints
            if rel in c.results and score in c.results[rel].scores
        ]
        if not points:
            continue
        grid = a.checkpoints[-1].results.get(rel) or next(c.results[rel] for c in a.checkpoints if rel in c.results)
        labels = head_labels(*grid.scores[score].shape)
        few = len(labels) <= 4
        for h, label in enumerate(labels):
            name = f"{run.label} {label}" if len(have) > 1 else label
            out.append(
                Series(
                    name,
                    [p[0] for p in points],
                    [_num(p[1][h]) for p in points],
                    color=i if few else h,
                    dash=h if few else i % 4,
                )
            )
    return out


def _description(have: list[tuple[int, RunResults, AnalysisResults]], rel: str, score: str) -> str:
    for _, _, a in have:
        for c in a.checkpoints:
            if rel in c.results and score in c.results[rel].descriptions:
                return c.results[rel].descriptions[score].capitalize() + "."
    return ""


def _next_output_by_position(have: list[tuple[int, RunResults, AnalysisResults]]) -> HeatmapFigure | None:
    panels = []
    for _, run, a in have:
        r = a.at_focus("head_scores/next_output_by_pos")
        if r is None:
            continue
        n_layers, n_heads, n_pos = r.scores.shape
        z = [[_num(v) for v in row] for row in r.scores.reshape(n_layers * n_heads, n_pos).tolist()]
        panels.append(
            Heatmap(
                f"{run.label} ({a.focus.name})",
                z,
                [str(p) for p in range(n_pos)],
                head_labels(n_layers, n_heads),
                "query position",
                "head",
            )
        )
    if not panels:
        return None
    return HeatmapFigure(
        "next-output-by-pos",
        "Attention to the next output, by position",
        panels,
        guide="For each output position, the attention the head gives to the token it must output "
        "next (blank where no such token is in view).",
        value_label="score",
        zmin=0.0,
        zmax=1.0,
    )


def sparsity_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, a) for i, r, a in with_analysis(runs) if any("sparsity" in c.results for c in a.checkpoints)]
    if not have:
        return None
    figures = []
    for field_name, title, y_label in (
        ("fraction_active", "Fraction of MLP neurons active", "fraction active"),
        ("dead_fraction", "Dead MLP neurons", "fraction never active"),
        ("l1", "Mean L1 norm of MLP activations", "L1"),
    ):
        series = []
        for i, run, a in have:
            points = [
                (c.step, getattr(c.results["sparsity"], field_name).tolist())
                for c in a.checkpoints
                if "sparsity" in c.results
            ]
            for layer in range(len(points[0][1])):
                name = f"{run.label} MLP {layer}" if len(have) > 1 else f"MLP {layer}"
                series.append(
                    Series(name, [p[0] for p in points], [_num(p[1][layer]) for p in points], color=i, dash=layer % 4)
                )
        figures.append(LineFigure(f"sparsity-{field_name}", title, "step", y_label, series, small=True))
    guide = (
        "How many MLP neurons fire (activation > 0) on the analysed tokens at each checkpoint: an L1 penalty "
        "or weight decay that sparsifies the MLP shows as a falling fraction active."
    )
    return Section(
        "sparsity",
        "MLP activation sparsity over training",
        guide,
        figures,
        missing_note(runs, have, "MLP sparsity (attention-only models have no MLP)"),
    )


def trajectory_section(runs: list[RunResults]) -> Section | None:
    """Every other numeric headline scalar of the analysis, one small chart each."""
    have = [(i, r, t) for i, r, a in with_analysis(runs) if (t := a.trajectory) is not None]
    series: dict[str, list[Series]] = defaultdict(list)
    for i, run, t in have:
        keep = sorted(range(len(t.steps)), key=lambda j: t.steps[j])
        for name, values in t.scalars.items():
            if name.startswith(SHOWN_ELSEWHERE) or name.endswith(".argmax") or "->" in name:  # edges: Circuits
                continue
            points = [(t.steps[j], values[j]) for j in keep if isinstance(values[j], (int, float))]
            if points:
                series[name].append(Series(run.label, [p[0] for p in points], [_num(p[1]) for p in points], color=i))
    if not series:
        return None
    figures = [
        LineFigure(
            f"traj-{name.replace('/', '-').replace('.', '-')}", name, "step", name.rsplit("/", 1)[-1], s, small=True
        )
        for name, s in sorted(series.items())
    ]
    guide = (
        'The analysis\'s headline number for each result at every analysed checkpoint (".max" is the largest '
        "over heads, e.g. the strongest copying head or the head whose ablation costs the most loss)."
    )
    return Section(
        "analysis-over-training",
        "Other analysis metrics over training",
        guide,
        figures,
        missing_note(runs, have, "analysis over checkpoints"),
    )


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
