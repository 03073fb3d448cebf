"""Figure specifications: plain data that the report's script draws in the browser and `png.py`
draws with matplotlib, so the HTML figure and its PNG always show the same numbers.

    LineFigure("loss", "Loss", x_label="step", y_label="loss", series=[Series("run-a", xs, ys)])
    HeatmapFigure("ov", "OV circuit", panels=[Heatmap("run-a", z, x_labels, y_labels)], diverging=True)

A report is a list of `Section`s; each holds figures, tables and an attention viewer, each with a
one-sentence reading guide. `to_json` rounds floats to 4 significant digits (the report shows no
more), which keeps a file with many checkpoints small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Num = int | float
"""A plotted value: steps are ints, metrics floats."""


@dataclass
class Series:
    """One line: y over x, optionally with an error bar (± err) at each point."""

    name: str
    x: list[Num]
    y: Sequence[Num | None]
    err: Sequence[Num | None] | None = None
    color: int = 0
    """Palette index: the run's position, so a run keeps its colour in every figure."""
    dash: int = 0
    """Line style: 0 solid, 1 dashed, 2 dotted, 3 dash-dot."""


@dataclass
class Mark:
    """A vertical line across a chart at x, e.g. a stage boundary; its label shows on hover."""

    x: Num
    label: str
    color: int = 0
    """Palette index, as Series.color (the run's colour)."""


@dataclass
class LineFigure:
    id: str
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    guide: str = ""
    log_x: bool = False
    log_y: bool = False
    x_ticks: list[str] | None = None
    """Names of the x positions 0, 1, 2 ... for a categorical x axis (e.g. layers)."""
    small: bool = False
    """Drawn smaller, for grids of many related charts."""
    marks: list[Mark] = field(default_factory=list)
    """Vertical lines (stage boundaries on a step axis)."""
    x_range: list[Num] | None = None
    """[min, max] of the x axis (so that charts share a time axis); None: the data's range."""
    kind: str = "lines"


@dataclass
class Heatmap:
    """One panel: z[row][col] with a label per row and per column."""

    title: str
    z: Sequence[Sequence[Num | None]]
    x_labels: list[str]
    y_labels: list[str]
    x_title: str = ""
    y_title: str = ""


@dataclass
class HeatmapFigure:
    """Panels side by side (one per run, or per layer); one colour scale when `shared_scale`."""

    id: str
    title: str
    panels: list[Heatmap]
    guide: str = ""
    value_label: str = "value"
    diverging: bool = False
    """Signed values: a blue-white-red scale centred on 0; otherwise white to blue from zmin."""
    shared_scale: bool = True
    zmin: float | None = None
    zmax: float | None = None
    kind: str = "heatmaps"

    def __post_init__(self) -> None:
        if self.zmin is None or self.zmax is None:
            lo, hi = value_range([v for p in self.panels for row in p.z for v in row])
            if self.diverging:
                lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
            self.zmin = lo if self.zmin is None else self.zmin
            self.zmax = hi if self.zmax is None else self.zmax


@dataclass
class Table:
    """A table rendered as HTML; cells are text or numbers (numbers get 4 significant digits)."""

    id: str
    columns: list[str]
    rows: list[list[Any]]
    guide: str = ""
    title: str = ""
    kind: str = "table"


@dataclass
class AttentionExample:
    tokens: list[str]
    patterns: list[list[list[list[Num]]]]
    """[layer][head][query][key] attention probabilities."""
    source: str = ""
    """Where the input comes from, e.g. "task #0" or "repeated #1"."""


@dataclass
class AttentionRun:
    label: str
    checkpoint: str
    examples: list[AttentionExample]
    color: int = 0


@dataclass
class AttentionViewer:
    """Pick run, layer, head and example; tokens on both axes; hover shows the probability."""

    id: str
    runs: list[AttentionRun]
    guide: str = ""
    title: str = ""
    kind: str = "attention"


@dataclass
class Code:
    """Preformatted text (a config), folded until clicked."""

    id: str
    title: str
    text: str
    kind: str = "code"


@dataclass
class GraphNode:
    """A node of a circuit graph: `row` counts from the bottom (0: the embeddings), `column` is
    its place in the row (0, 1, ...)."""

    id: str
    label: str
    row: int
    column: int
    ports: list[str] = field(default_factory=list)
    """Named inputs an edge can end at (a head's q, k, v), left to right; none: the node's centre."""


@dataclass
class GraphEdge:
    source: str
    target: str
    port: str
    """The target's input the edge ends at ("" for a node without ports)."""
    score: float


@dataclass
class CircuitGraph:
    """A circuit as a layered graph, written into the page as inline SVG (`report.svg`: no
    script needed) and drawn alike by `png.py`. `facts` are shown beside it."""

    id: str
    title: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    row_labels: list[str]
    """Bottom to top."""
    facts: list[list[Any]] = field(default_factory=list)
    """[label, value] rows of a small table beside the graph."""
    guide: str = ""
    kind: str = "graph"


Block = LineFigure | HeatmapFigure | Table | AttentionViewer | Code | CircuitGraph


@dataclass
class Section:
    """One part of the report: a title, a reading guide, and its figures and tables."""

    id: str
    title: str
    guide: str
    blocks: Sequence[Block] = field(default_factory=list)
    note: str = ""
    """Shown under the guide, e.g. which runs lack these results."""


HEATMAP_BUDGET = 120_000
"""Cells in one heatmap figure, at most; larger panels are cut to their top-left corner (`trimmed`)."""


def trimmed(fig: HeatmapFigure) -> HeatmapFigure:
    """Cut every panel to a top-left corner when the figure would exceed HEATMAP_BUDGET cells."""
    cells = sum(len(p.z) * (len(p.z[0]) if p.z else 0) for p in fig.panels)
    if cells <= HEATMAP_BUDGET:
        return fig
    side = max(8, int(math.sqrt(HEATMAP_BUDGET / len(fig.panels))))
    for p in fig.panels:
        p.z = [row[:side] for row in p.z[:side]]
        p.y_labels, p.x_labels = p.y_labels[:side], p.x_labels[:side]
    fig.guide += f" (Panels cut to their first {side} rows and columns to keep the page small.)"
    fig.zmin = fig.zmax = None
    fig.__post_init__()
    return fig


def value_range(values: list[Num | None]) -> tuple[float, float]:
    """(min, max) of the finite values; (0, 1) when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def to_json(obj: Any) -> Any:
    """Figure data as JSON-able structures, floats rounded to 4 significant digits, NaN -> null."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, float):
        return round_sig(obj)
    return obj


def round_sig(v: float, digits: int = 4) -> float | None:
    if not math.isfinite(v):
        return None
    if v == 0:
        return 0.0
    return round(v, digits - 1 - int(math.floor(math.log10(abs(v)))))


def fmt(v: Any) -> str:
    """A table cell: numbers with 4 significant digits, everything else as text."""
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)
