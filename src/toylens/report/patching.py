"""The activation patching section: every patching grid of the focus checkpoint as heatmaps, one
panel per run; and the grid-to-panel drawing the circuit section's AtP comparison reuses."""

from __future__ import annotations

import math
from typing import Any

from toylens.report.analysis import AnalysisResults, missing_note, with_analysis
from toylens.report.collect import RunResults
from toylens.report.figures import Heatmap, HeatmapFigure, Section, trimmed

PATCH_GUIDES = {
    "resid_pre": "the residual stream entering each layer, at each position",
    "attn_out": "each attention layer's output, at each position",
    "mlp_out": "each MLP's output, at each position",
    "head_out": "each head's output (all positions)",
    "head_out_by_pos": "each head's output at each position",
    "head_pattern": "each head's attention pattern (all positions)",
    "head_pattern_by_pos": "each head's attention pattern at each query position",
    "head_values": "each head's values (all positions)",
    "head_values_by_pos": "each head's values at each position",
}


def patching_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, a) for i, r, a in with_analysis(runs) if patch_keys(a)]
    if not have:
        return None
    keys = sorted({k for _, _, a in have for k in patch_keys(a)}, key=patch_order)
    blocks = []
    for key in keys:
        variant = key.rsplit("/", 1)[-1]
        metric = key.split("/")[1] if key.count("/") == 2 else ""
        panels = [patch_panel(run, a, a.at_focus(key)) for _, run, a in have if a.at_focus(key) is not None]
        first = next(a.focus_result(key) for _, _, a in have if key in a.focus.results)
        title = f"Patching {variant.replace('_', ' ')}" + (f" ({metric})" if metric else "")
        guide = (
            f"Patching {PATCH_GUIDES.get(variant, variant)} from the clean run into the corrupted one; "
            f"metric: {first.metric} ({first.metric_description})."
        )
        blocks.append(
            trimmed(
                HeatmapFigure(
                    f"patching-{key.removeprefix('patching/').replace('/', '-')}",
                    title,
                    panels,
                    diverging=True,
                    value_label="restored (1 = clean)",
                    guide=guide,
                )
            )
        )
    guide = (
        "Activation patching: each cell copies one activation from the clean input into the corrupted run; "
        "1 means that alone restores the clean answer, 0 that it changes nothing."
    )
    return Section("patching", "Activation patching", guide, blocks, missing_note(runs, have, "patching results"))


def patch_keys(a: AnalysisResults) -> list[str]:
    """Patching results at the focus checkpoint: patching/<variant> or patching/<metric>/<variant>."""
    return [k for k in a.focus.results if k.startswith("patching/")]


def patch_order(key: str) -> tuple[str, int, str]:
    """Sort key of a patching result: by metric, then the variants in PATCH_GUIDES order."""
    parts = key.split("/")
    variant, metric = parts[-1], parts[1] if len(parts) == 3 else ""
    order = list(PATCH_GUIDES)
    return metric, order.index(variant) if variant in order else len(order), variant


def patch_panel(run: RunResults, a: AnalysisResults, grid: Any) -> Heatmap:
    """A grid of any rank as rows x columns: positions (or the last axis) across, the rest down."""
    axes, values = list(grid.grid_axes), grid.normalized
    col_axis = axes.index("pos") if "pos" in axes else len(axes) - 1
    order = [k for k in range(len(axes)) if k != col_axis] + [col_axis]
    values = values.permute(order)
    row_axes = [axes[k] for k in order[:-1]]
    rows = [""]
    for ax in row_axes:
        names = grid.labels.get(ax) or [str(j) for j in range(values.shape[row_axes.index(ax)])]
        rows = [f"{r}{_short(ax)}{n}" for r in rows for n in names]
    cols = grid.labels.get(axes[col_axis]) or [str(j) for j in range(values.shape[-1])]
    z = [[_num(v) for v in row] for row in values.reshape(len(rows), -1).tolist()]
    title = f"{run.label} (clean {grid.clean:.3g}, corrupted {grid.corrupted:.3g})"
    return Heatmap(title, z, [str(c) for c in cols], rows, axes[col_axis], " × ".join(row_axes))


def _short(axis: str) -> str:
    return {"layer": "L", "head": "H", "pos": "@"}.get(axis, axis[:1])


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
