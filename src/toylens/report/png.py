"""The report's figures as PNG files, drawn with matplotlib from the same specifications as the
HTML (so both show the same numbers). matplotlib comes with `pip install toylens[report]`; without
it the HTML report is still written and `write_pngs` says why there are no PNGs.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas directly: no pyplot
state, no display needed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toylens.report.figures import (
    AttentionRun,
    AttentionViewer,
    Block,
    CircuitGraph,
    Heatmap,
    HeatmapFigure,
    LineFigure,
    Section,
    fmt,
)
from toylens.storage import atomic_write

if TYPE_CHECKING:  # matplotlib is optional (toylens[report]): imported where a figure is drawn
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger("toylens")

PALETTE = ["#2457a6", "#d1495b", "#2a9d5c", "#e08e0b", "#7b4bb7", "#00798c", "#8d6a4f", "#c2459b", "#5b6475", "#9bb300"]
DASHES = ["-", "--", ":", "-."]
MAX_LABELS = 40  # beyond this many rows or columns, tick labels would overlap
PANELS_PER_PNG = 9  # more panels go to several PNGs (<id>-1.png, <id>-2.png, ...)


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_pngs(sections: list[Section], folder: Path) -> list[Path]:
    """One PNG per figure (tables have none) in `folder`; returns the files written."""
    if not matplotlib_available():
        log.warning(
            "report: matplotlib is not installed, so no PNG figures were written (pip install 'toylens[report]')"
        )
        return []
    written = []
    for section in sections:
        for block in section.blocks:
            for name, fig in _figures(block):
                path = folder / f"{_safe(name)}.png"
                atomic_write(path, _png_bytes(fig))
                written.append(path)
    return written


def _figures(block: Block) -> list[tuple[str, Figure]]:
    from matplotlib.figure import Figure

    if isinstance(block, LineFigure):
        fig = Figure(figsize=(6.4, 4.0), dpi=110, layout="constrained")
        draw_lines(fig.add_subplot(), block)
        return [(block.id, fig)]
    if isinstance(block, HeatmapFigure):
        if len(block.panels) <= PANELS_PER_PNG:
            return [(block.id, draw_heatmaps(block))]
        chunks = range(0, len(block.panels), PANELS_PER_PNG)
        return [
            (
                f"{block.id}-{k // PANELS_PER_PNG + 1}",
                draw_heatmaps(dataclasses.replace(block, panels=block.panels[k : k + PANELS_PER_PNG])),
            )
            for k in chunks
        ]
    if isinstance(block, CircuitGraph):
        return [(block.id, draw_graph(block))]
    if isinstance(block, AttentionViewer):
        return [(f"{block.id}-{i}-{_safe(run.label)}", draw_attention(run)) for i, run in enumerate(block.runs)]
    return []


def draw_lines(ax: Axes, spec: LineFigure) -> None:
    for s in spec.series:
        pts = [(x, y, (s.err[j] if s.err else None)) for j, (x, y) in enumerate(zip(s.x, s.y)) if y is not None]
        if spec.log_x:
            pts = [p for p in pts if p[0] > 0]
        if not pts:
            continue
        xs, ys, errs = zip(*pts)
        err = [e or 0.0 for e in errs] if s.err else None
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            color=PALETTE[s.color % len(PALETTE)],
            linestyle=DASHES[s.dash % len(DASHES)],
            marker="o" if len(xs) <= 40 else None,
            markersize=2.5,
            linewidth=1.5,
            capsize=2 if err else 0,
            label=s.name,
        )
    for mark in spec.marks:
        if not (spec.log_x and mark.x <= 0):
            ax.axvline(mark.x, color=PALETTE[mark.color % len(PALETTE)], linestyle=":", linewidth=1, alpha=0.8)
    if spec.x_range and not (spec.log_x and spec.x_range[0] <= 0):
        ax.set_xlim(spec.x_range[0], spec.x_range[1])
    ax.set_title(spec.title, fontsize=11)
    ax.set_xlabel(spec.x_label)
    ax.set_ylabel(spec.y_label)
    if spec.x_ticks:
        ax.set_xticks(range(len(spec.x_ticks)), spec.x_ticks, fontsize=7, rotation=30)
    elif spec.log_x:
        ax.set_xscale("log")
    if spec.log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if spec.series:
        ax.legend(fontsize=7, ncols=2 if len(spec.series) > 6 else 1)


def draw_heatmaps(spec: HeatmapFigure) -> Figure:
    from matplotlib.figure import Figure

    n = len(spec.panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols + 0.8, 3.9 * rows + 0.5), dpi=110, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = "RdBu_r" if spec.diverging else "Blues"
    for i, panel in enumerate(spec.panels):
        ax = axes[i // cols][i % cols]
        lo, hi = (spec.zmin, spec.zmax) if spec.shared_scale else _panel_range(panel, spec.diverging)
        image = ax.imshow(_masked(panel.z), cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
        _label_axes(ax, panel)
        if not spec.shared_scale:
            fig.colorbar(image, ax=ax, shrink=0.8)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if spec.shared_scale and spec.panels:
        fig.colorbar(image, ax=axes, shrink=0.8, label=spec.value_label)
    fig.suptitle(spec.title, fontsize=11)
    return fig


def draw_attention(run: AttentionRun) -> Figure:
    """Every layer and head of the run's first example, query rows and key columns."""
    from matplotlib.figure import Figure

    example = run.examples[0]
    n_layers, n_heads = len(example.patterns), len(example.patterns[0])
    fig = Figure(figsize=(3.2 * n_heads + 0.6, 3.2 * n_layers + 0.5), dpi=110, layout="constrained")
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    for layer in range(n_layers):
        for head in range(n_heads):
            z = example.patterns[layer][head]
            panel = Heatmap(
                f"L{layer}H{head}", z, example.tokens[: len(z[0])], example.tokens[: len(z)], "key", "query"
            )
            axes[layer][head].imshow(z, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            _label_axes(axes[layer][head], panel, fontsize=5)
    fig.suptitle(f"Attention, {run.label} ({run.checkpoint}), example 0", fontsize=11)
    return fig


def draw_graph(spec: CircuitGraph) -> Figure:
    """The circuit graph as the page draws it (`report.svg`: same layout, curves, colours and
    widths, in the SVG's pixel coordinates), its facts to the right."""
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch, Rectangle
    from matplotlib.path import Path as CurvePath

    from toylens.report.svg import NODE_H, NODE_W, ROW, edge_curves, layout

    centre, width, height = layout(spec)
    fig = Figure(figsize=(width / 100 + 3.6, height / 100 + 0.5), dpi=110, layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=[width, 330])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y down, as in SVG
    ax.set_aspect("equal")
    ax.axis("off")
    for row, label in enumerate(spec.row_labels):
        ax.text(4, height - ROW / 2 - row * ROW, label, fontsize=7, va="center", color="#5b6475")
    for _, (x1, y1, x2, y2, bend), colour, w in edge_curves(spec):
        curve = CurvePath(
            [(x1, y1), (x1, y1 - bend), (x2, y2 + bend), (x2, y2)], [CurvePath.MOVETO] + [CurvePath.CURVE4] * 3
        )
        ax.add_patch(PathPatch(curve, fill=False, edgecolor=colour, linewidth=w * 0.75, alpha=0.75))
    for n in spec.nodes:
        x, y = centre[n.id]
        ax.add_patch(
            Rectangle((x - NODE_W / 2, y - NODE_H / 2), NODE_W, NODE_H, facecolor="white", edgecolor="#1d2330")
        )
        ax.text(x, y, n.label + ("\n" + "  ".join(n.ports) if n.ports else ""), fontsize=6, ha="center", va="center")
    facts = "\n".join(f"{label}: {fmt(value)}" for label, value in spec.facts)
    side.axis("off")
    side.text(0, 0.5, facts, fontsize=7, ha="left", va="center", linespacing=1.6)
    fig.suptitle(spec.title, fontsize=10)
    return fig


def _label_axes(ax: Axes, panel: Heatmap, fontsize: int = 6) -> None:
    ax.set_title(panel.title, fontsize=9)
    for axis, labels, title in ((ax.xaxis, panel.x_labels, panel.x_title), (ax.yaxis, panel.y_labels, panel.y_title)):
        if len(labels) <= MAX_LABELS:
            axis.set_ticks(range(len(labels)), [str(t)[:12] for t in labels], fontsize=fontsize)
        axis.set_label_text(title, fontsize=8)
    if len(panel.x_labels) <= MAX_LABELS:
        ax.tick_params(axis="x", labelrotation=90)


def _panel_range(panel: Heatmap, diverging: bool) -> tuple[float, float]:
    from toylens.report.figures import value_range

    lo, hi = value_range([v for row in panel.z for v in row])
    if diverging:
        m = max(abs(lo), abs(hi))
        return -m, m
    return lo, hi


def _masked(z: Sequence[Sequence[float | None]]) -> np.ma.MaskedArray:
    import numpy as np

    return np.ma.masked_invalid(np.array([[math.nan if v is None else v for v in row] for row in z], dtype=float))


def _png_bytes(fig: Figure) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "figure"
