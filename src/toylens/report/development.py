"""The Development section: how the model changed over training, on one time axis.

Reads what `toylens llc --restrict heads` and `toylens development` saved: the refined LLC of
every head (RUN/llc/<head>/<checkpoint>.json), the essential dynamics
(RUN/development/essential_dynamics) and the stage boundaries (RUN/development/stages.json), plus the
head scores the analysis saved at every analysed checkpoint. Its figures: the curves the stages
were read from (raw and smoothed), the refined LLC of each head (one small chart per head), the
essential-dynamics trajectory (PC1 against PC2, and each PC over training) and the head scores,
all over the same step axis. `mark_stages` then marks every run's stage boundaries on every chart
of the report whose x axis is the training step. A part whose results are missing is left out
with one sentence saying how to make it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toylens.report.analysis import with_analysis
from toylens.report.collect import RunResults
from toylens.report.figures import LineFigure, Mark, Num, Section, Series, Table
from toylens.report.trajectories import head_series
from toylens.rundir import RunDir

if TYPE_CHECKING:  # imported when reading, so that the report module loads without the analysis package
    from toylens.development import EssentialDynamics, Stages

HEAD_SCORES = ("induction", "previous_token")
# Palette colours of the stage-boundary dots on the trajectory, by kind (runs take 0, 1, ...).
KIND_COLORS = {"fastest rise": 2, "fastest drop": 3, "peak": 4, "trough": 5, "plateau end": 6, "plateau start": 7}
_HEAD = re.compile(r"l(\d+)h(\d+)$")


@dataclass
class DevelopmentResults:
    restricted: dict[str, list[dict[str, Any]]]
    """{restriction: summaries in training order} (empty without `toylens llc --restrict`)."""
    dynamics: EssentialDynamics | None
    stages: Stages | None


def read_development(run: RunDir, checkpoints: list[str]) -> DevelopmentResults | None:
    """The run's development results, or None when it has none of them."""
    from toylens.development import ED_PATH, STAGES_PATH, EssentialDynamics, Stages
    from toylens.llc import WHOLE, read_estimates
    from toylens.rundir.results import has_result

    restricted = {k: v for k, v in read_estimates(run).items() if k != WHOLE}
    dynamics = EssentialDynamics.load(run, ED_PATH) if has_result(run, ED_PATH) else None
    stages = Stages.load(run, STAGES_PATH) if has_result(run, STAGES_PATH) else None
    if not restricted and dynamics is None and stages is None:
        return None
    return DevelopmentResults(restricted, dynamics, stages)


def development_of(run: RunResults) -> DevelopmentResults | None:
    return run.extras.get("development")


def development_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, d) for i, r in enumerate(runs) if (d := development_of(r))]
    if not have:
        return None
    x_range = [0, max(max(c.step for c in r.checkpoints) for _, r, _ in have)]
    blocks: list[Any] = []
    notes = []
    stages = [(i, r, d.stages) for i, r, d in have if d.stages is not None]
    if stages:
        blocks += _stage_blocks(stages, x_range)
    else:
        notes.append("No stage boundaries yet: run `toylens development RUN`.")
    heads = _head_llc_figures(have, x_range)
    rises = _head_rise_table(have)
    blocks += heads + ([rises] if rises else [])
    if not heads:
        notes.append("No per-head refined LLC: run `toylens llc RUN --restrict heads` (after `toylens llc calibrate`).")
    dyn = [(i, r, d.dynamics) for i, r, d in have if d.dynamics is not None]
    if dyn:
        blocks += _dynamics_blocks(dyn, x_range)
    else:
        notes.append("No essential dynamics: run `toylens development RUN`.")
    scores = _head_score_figures(runs, x_range)
    blocks += scores
    if not scores:
        notes.append("No head scores over training: run `toylens analyze RUN --checkpoint all --only head_scores`.")
    guide = (
        "How each run changed over training, on one step axis: stage boundaries (dotted lines, in the run's "
        "colour, on every chart over steps in this report) are critical points of the smoothed loss and LLC "
        "curves; the refined LLC of a head samples only that head's weights, so a head that forms shows as a "
        "rise in its own λ̂; essential dynamics project the model's outputs at each checkpoint on their main "
        "directions of change."
    )
    return Section("development", "Development", guide, blocks, " ".join(notes))


def _stage_blocks(stages: list[tuple[int, RunResults, Stages]], x_range: list[int]) -> list[Any]:
    rows = [
        [r.label, b["curve"], b["kind"], b["checkpoint"], b["step"], b["value"]]
        for _, r, s in stages
        for b in s.boundaries
    ]
    table = Table(
        "stages",
        ["run", "curve", "critical point", "checkpoint", "step", "smoothed value"],
        rows,
        title="Stage boundaries",
        guide=f"Smoothing: {stages[0][2].smoothing}. Peaks and troughs are turns of the smoothed curve; "
        "fastest rise/drop its steepest points (the middle of a transition); plateau start/end where its slope "
        "falls under / rises over a tenth of its steepest.",
    )
    curves = sorted({c for _, _, s in stages for c in s.curves})
    figures = []
    for curve in curves:
        series = []
        for i, r, s in stages:
            if curve not in s.curves:
                continue
            c = s.curves[curve]
            prefix = f"{r.label} " if len(stages) > 1 else ""
            series.append(Series(f"{prefix}{curve}", c["steps"], c["values"], color=i, dash=1))
            series.append(Series(f"{prefix}{curve} (smoothed)", c["steps"], c["smoothed"], color=i))
        figures.append(
            LineFigure(
                f"stages-{_safe(curve)}",
                f"{curve} and its smoothing",
                "step",
                curve,
                series,
                x_range=list(x_range),
                guide="The curve the stage boundaries were read from (dashed) and its smoothing (solid).",
            )
        )
    return [table, *figures]


def _head_key(name: str) -> tuple[int, int, str]:
    m = _HEAD.match(name)
    return (int(m.group(1)), int(m.group(2)), name) if m else (1 << 30, 0, name)


def _head_llc_figures(have: list[tuple[int, RunResults, DevelopmentResults]], x_range: list[int]) -> list[LineFigure]:
    names = sorted({n for _, _, d in have for n in d.restricted if _HEAD.match(n)}, key=_head_key)
    figures = []
    for name in names:
        series = [
            Series(
                r.label,
                [e["step"] for e in d.restricted[name]],
                [_num(e.get("llc")) for e in d.restricted[name]],
                err=[_num(e.get("llc_se")) for e in d.restricted[name]],
                color=i,
            )
            for i, r, d in have
            if name in d.restricted
        ]
        layer, head, _ = _head_key(name)
        figures.append(
            LineFigure(
                f"head-llc-{name}",
                f"Refined LLC of L{layer}H{head}",
                "step",
                "λ̂ (this head's weights)",
                series,
                small=True,
                x_range=list(x_range),
            )
        )
    return figures


@dataclass
class HeadRise:
    head: str
    before: dict[str, Any]
    after: dict[str, Any]
    rise: float | None
    """λ̂ after / λ̂ before (None when λ̂ before is not positive)."""


def head_rises(restricted: dict[str, list[dict[str, Any]]], step: int) -> list[HeadRise]:
    """Each head's refined LLC just before `step` (its last estimate at an earlier step) and at or
    after it (its first estimate there), ranked by the ratio, largest first; heads without an
    estimate on both sides, or with a non-positive λ̂ before, rank last (a ratio of such is no rise)."""
    out = []
    for name, summaries in restricted.items():
        if not _HEAD.match(name):
            continue
        before = [e for e in summaries if e["step"] < step]
        after = [e for e in summaries if e["step"] >= step]
        if not before or not after:
            continue
        b, a = before[-1], after[0]
        lb, la = _num(b.get("llc")), _num(a.get("llc"))
        rise = la / lb if lb is not None and la is not None and lb > 0 else None
        out.append(HeadRise(name, b, a, rise))
    return sorted(out, key=lambda h: (h.rise is None, -(h.rise or 0.0), _head_key(h.head)))


def head_clusters(restricted: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """The heads in two clusters by their refined-LLC curves over the checkpoints every head has an
    estimate at (`development.stages.cluster_curves`, 0 the higher); {} with fewer than two heads or
    checkpoints."""
    heads = {n: {e["checkpoint"]: _num(e.get("llc")) for e in es} for n, es in restricted.items() if _HEAD.match(n)}
    shared = set.intersection(*({c for c, v in h.items() if v is not None} for h in heads.values())) if heads else set()
    if len(heads) < 2 or len(shared) < 2:
        return {}
    from toylens.development import cluster_curves

    order = sorted(shared)
    return cluster_curves({n: [float(h[c]) for c in order] for n, h in heads.items()})  # type: ignore[arg-type]


def _head_rise_table(have: list[tuple[int, RunResults, DevelopmentResults]]) -> Table | None:
    """Heads ranked by the rise of their refined LLC across the run's steepest whole-model LLC rise."""
    rows = []
    for _, r, d in have:
        if d.stages is None or not d.restricted:
            continue
        steepest = [b for b in d.stages.boundaries if b["curve"] == "llc" and b["kind"] == "fastest rise"]
        if not steepest:
            continue
        step = steepest[0]["step"]
        groups = head_clusters(d.restricted)
        for rank, h in enumerate(head_rises(d.restricted, step), 1):
            rows.append(
                [
                    r.label,
                    rank if h.rise is not None else None,
                    h.head,
                    _estimate(h.before),
                    _estimate(h.after),
                    None if h.rise is None else round(h.rise, 2),
                    None if h.head not in groups else groups[h.head] + 1,
                ]
            )
    if not rows:
        return None
    return Table(
        "head-llc-rise",
        ["run", "rank", "head", "λ̂ before", "λ̂ after", "rise (x)", "cluster"],
        rows,
        title="Heads ranked by the rise of their refined LLC",
        guide="Across each run's steepest rise of the whole-model LLC (its 'fastest rise' stage boundary): every "
        "head's refined λ̂ at its last estimate before that step and its first at or after it, ranked by the "
        "ratio. Heads that form in that transition rise most; a λ̂ before that is not positive gives no ratio. "
        "Cluster: the heads split in two by their whole refined-LLC curves (k-means on λ̂ at the checkpoints "
        "every head has, the best of all splits; 1 the group with the higher λ̂).",
    )


def _estimate(summary: dict[str, Any]) -> str:
    llc = _num(summary.get("llc"))
    return f"{'n/a' if llc is None else format(llc, '.3g')} ({summary['checkpoint']})"


def _dynamics_blocks(dyn: list[tuple[int, RunResults, EssentialDynamics]], x_range: list[int]) -> list[Any]:
    """The trajectory in PC1-PC2, each of the first 3 PCs over training, the explained variance."""
    blocks: list[Any] = [fig] if (fig := _trajectory(dyn)) else []
    for c in range(min(3, min(ed.projections.shape[1] for _, _, ed in dyn))):
        series = [Series(r.label, _steps(ed), [row[c] for row in ed.projections.tolist()], color=i) for i, r, ed in dyn]
        blocks.append(
            LineFigure(
                f"essential-dynamics-pc{c + 1}",
                f"PC{c + 1} over training",
                "step",
                f"PC{c + 1}",
                series,
                small=True,
                x_range=list(x_range),
            )
        )
    rows = []
    for _, r, ed in dyn:
        shares: list[float | None] = [float(v) for v in ed.explained_variance[:3].tolist()]
        rows.append([r.label, ed.probe, ed.outputs, ed.n_features, *(shares + [None] * 3)[:3]])
    blocks.append(
        Table(
            "essential-dynamics-variance",
            ["run", "probe set", "outputs", "features per checkpoint", "PC1", "PC2", "PC3"],
            rows,
            title="Essential dynamics: explained variance",
            guide="Share of the variance across checkpoints (of the centred log-probs) that each component explains.",
        )
    )
    return blocks


def _trajectory(dyn: list[tuple[int, RunResults, EssentialDynamics]]) -> LineFigure | None:
    """PC2 against PC1, a line per run through its checkpoints, a dot per stage boundary."""
    traj = []
    for i, r, ed in dyn:
        if ed.projections.shape[1] < 2:
            continue
        pc = ed.projections.tolist()
        var = ed.explained_variance.tolist()
        traj.append(
            Series(f"{r.label} (PC1 {var[0]:.0%}, PC2 {var[1]:.0%})", [p[0] for p in pc], [p[1] for p in pc], color=i)
        )
        at = {n: j for j, n in enumerate(ed.checkpoints)}
        found = development_of(r)
        for b in found.stages.boundaries if found is not None and found.stages is not None else []:
            j = at.get(b["checkpoint"], _nearest(ed.steps, b["step"]))
            name = f"{r.label}: {b['curve']} {b['kind']} (step {b['step']})"
            traj.append(Series(name, [pc[j][0]], [pc[j][1]], color=KIND_COLORS.get(b["kind"], 8)))
    if not traj:
        return None
    return LineFigure(
        "essential-dynamics",
        "Essential dynamics: the trajectory in PC1 and PC2",
        "PC1",
        "PC2",
        traj,
        guide="Each point is one checkpoint's log-probs on the fixed probe set, projected on the two "
        "directions along which they change most over training (share of the variance in the legend); "
        "single dots, coloured by kind, are the stage boundaries.",
    )


def _head_score_figures(runs: list[RunResults], x_range: list[int]) -> list[LineFigure]:
    have = with_analysis(runs)
    figures = []
    for score in HEAD_SCORES:
        series = head_series(have, "head_scores/repeated", score)
        if series and any(len(s.x) > 1 for s in series):
            figures.append(
                LineFigure(
                    f"development-{score}",
                    f"{score.replace('_', '-')} score over training (repeated random tokens)",
                    "step",
                    "score",
                    series,
                    small=True,
                    x_range=list(x_range),
                )
            )
    return figures


def mark_stages(sections: Sequence[Section], runs: list[RunResults]) -> None:
    """Mark every run's stage boundaries on every chart over training steps (in place)."""
    marks = []
    for i, r in enumerate(runs):
        d = development_of(r)
        if d is None or d.stages is None:
            continue
        by_step: dict[int, list[str]] = {}
        for b in d.stages.boundaries:
            by_step.setdefault(b["step"], []).append(f"{b['curve']} {b['kind']}")
        marks += [Mark(step, f"{r.label}, step {step}: " + "; ".join(what), i) for step, what in by_step.items()]
    if not marks:
        return
    for section in sections:
        for block in section.blocks:
            if isinstance(block, LineFigure) and block.x_label == "step":
                block.marks = list(marks)


def _steps(ed: EssentialDynamics) -> list[Num]:
    return list(ed.steps)


def _nearest(steps: list[int], step: int) -> int:
    return min(range(len(steps)), key=lambda j: abs(steps[j] - step))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
