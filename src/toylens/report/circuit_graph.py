"""The "Circuits" section: edge attribution (EAP, EAP-IG) and attribution patching (AtP).

Per run, at the focus checkpoint: the circuit `analyze` extracted (`eap/<metric>/faithfulness`:
the edges kept, everything else ablated) drawn as a layered graph (`report.svg`) with its edges'
EAP-IG scores (`eap/<metric>/edges_ig`, else EAP), its faithfulness beside it, and the strongest
edges as a table. Then every AtP grid next to the exact patching grid of the same variant, on one
colour scale, with their rank correlation and largest difference; and, from
`analysis/trajectory.json`, the scores of the final checkpoint's strongest edges at every
analysed checkpoint (one small chart per run).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from toylens.report import figures
from toylens.report.analysis import AnalysisResults, missing_note, with_analysis
from toylens.report.collect import RunResults
from toylens.report.figures import (
    CircuitGraph,
    GraphEdge,
    GraphNode,
    HeatmapFigure,
    LineFigure,
    Section,
    Series,
    Table,
)
from toylens.report.patching import patch_order, patch_panel

TOP_EDGES = 12
"""Rows per run of the strongest-edges table."""


def circuit_graph_section(runs: list[RunResults]) -> Section | None:
    have = with_analysis(runs)
    eap = [(i, r, a) for i, r, a in have if _eap_keys(a)]
    pairs = [(i, r, a) for i, r, a in have if _atp_pairs(a)]
    over = [(i, r, a) for i, r, a in have if a.trajectory and any("->" in k for k in a.trajectory.scalars)]
    if not eap and not pairs:
        return None
    blocks: list[Any] = []
    for i, run, a in eap:
        for metric in _eap_keys(a):
            blocks += _circuit_blocks(i, run, a, metric)
    for i, run, a in pairs:
        blocks += [_pair_figure(i, run, a, key) for key in _atp_pairs(a)]
    if over:
        blocks += _over_training(over)
    guide = (
        "Edge attribution patching (EAP; EAP-IG integrates the gradient from the corrupted to the clean input) scores "
        "every edge writer -> reader of the residual stream: embeddings, heads and MLPs write; each head's query, "
        "key and value inputs, each MLP and the logits read. The circuit keeps the strongest edges; its faithfulness "
        "is the fraction it recovers, with every other edge ablated (exactly), of the metric gap between the whole "
        "graph (the clean run) and the empty circuit (every edge ablated: the corrupted run, under that ablation)."
    )
    notes = [missing_note(runs, eap, "edge attribution (toylens analyze RUN --only eap)")]
    return Section("edge-circuits", "Circuits", guide, blocks, " ".join(n for n in notes if n))


def _eap_keys(a: AnalysisResults) -> list[str]:
    """Metrics with edge scores at the focus checkpoint (eap/<metric>/edges[_ig])."""
    keys = [k.split("/")[1] for k in a.focus.results if k.startswith("eap/") and k.split("/")[-1].startswith("edges")]
    return sorted(set(keys))


def _edges(a: AnalysisResults, metric: str) -> Any:
    """EAP-IG scores when saved (the circuit is chosen by them), else EAP."""
    ig = a.at_focus(f"eap/{metric}/edges_ig")
    return ig if ig is not None else a.focus_result(f"eap/{metric}/edges")


def _circuit_blocks(i: int, run: RunResults, a: AnalysisResults, metric: str) -> list[Any]:
    edges, faith = _edges(a, metric), a.at_focus(f"eap/{metric}/faithfulness")
    method = f"EAP-IG ({edges.ig_steps} steps)" if edges.ig_steps > 1 else "EAP"
    blocks: list[Any] = []
    if faith is not None:
        blocks.append(
            CircuitGraph(
                f"circuit-graph-{i}-{metric}",
                f"{run.label}: circuit ({metric}, {a.focus.name})",
                *_graph(edges, faith.circuit),
                facts=[
                    ["recovered fraction of the gap", faith.recovered],
                    ["edges kept", f"{faith.n_edges} of {faith.total_edges}"],
                    *_chosen(faith),
                    ["ablation outside the circuit", faith.ablation],
                    ["metric with the circuit alone", faith.metric_value],
                    ["clean / corrupted metric", f"{faith.clean:.4g} / {faith.corrupted:.4g}"],
                    ["metric with no edge kept (0 recovered)", faith.ablated],
                    ["edge scores", method],
                ],
                guide=f"Each edge of the circuit, width by its absolute {method} score (red: patching it in raises "
                f"{metric}, blue: lowers it); an edge into a head ends at its q, k or v input. Hover for the score.",
            )
        )
    plain = a.at_focus(f"eap/{metric}/edges")
    rows = []
    for writer, reader, score in edges.top_edges(TOP_EDGES):
        w, r = edges.writers.index(writer), edges.readers.index(reader)
        kept = bool(faith.circuit[w, r]) if faith is not None else None
        eap = float(plain.scores[w, r]) if plain is not None else None
        rows.append([f"{writer} → {reader}", score, float(edges.normalized[w, r]), eap, kept])
    blocks.append(
        Table(
            f"top-edges-{i}-{metric}",
            ["edge", f"{method} score", "normalised (1 = gap)", "EAP score", "in circuit"],
            rows,
            title=f"{run.label}: strongest edges ({metric}, {a.focus.name})",
            guide=f"The {len(rows)} edges with the largest absolute {method} score ({edges.metric_description}); "
            f"corruption: {edges.corruption or 'the task default'}.",
        )
    )
    return blocks


def _chosen(faith: Any) -> list[list[Any]]:
    """How the circuit was chosen, and the recovered fraction of every size tried (`smallest_circuit`)."""
    if not faith.sizes:
        return []
    curve = ", ".join(f"{n}: {r:.2f}" for n, r in zip(faith.sizes, faith.curve, strict=True))
    return [
        ["circuit", f"the fewest strongest edges recovering {faith.target:.0%} of the gap"],
        ["recovered by the strongest n edges", curve],
    ]


def _graph(edges: Any, keep: torch.Tensor) -> tuple[list[GraphNode], list[GraphEdge], list[str]]:
    """Nodes by layer (embed, then each layer's heads and MLP, then the logits) and the kept edges."""
    nodes, rows, row_of = [GraphNode("embed", "embed", 0, 0)], ["embed"], {}
    for name in edges.writers[1:]:  # L{l}H{h} or MLP{l}, in layer order
        label = "attn" if name.startswith("L") else "MLP"
        layer = name.split("H")[0][1:] if name.startswith("L") else name[3:]
        key = f"{label} {layer}"
        if key not in row_of:
            row_of[key] = len(rows)
            rows.append(f"L{layer} {label}")
        column = sum(n.row == row_of[key] for n in nodes)
        nodes.append(GraphNode(name, name, row_of[key], column, ["q", "k", "v"] if label == "attn" else []))
    nodes.append(GraphNode("logits", "logits", len(rows), 0))
    rows.append("logits")
    out = []
    for w, r in keep.nonzero().tolist():
        target, _, port = edges.readers[r].partition(".")
        out.append(GraphEdge(edges.writers[w], target, port, float(edges.scores[w, r])))
    return nodes, out, rows


# ------------------------------------------------------------------------- AtP beside exact


def _atp_pairs(a: AnalysisResults) -> list[str]:
    """atp/<metric>/<variant> keys at the focus that have an exact patching/<metric>/<variant>."""
    keys = [k for k in a.focus.results if k.startswith("atp/") and "patching/" + k[4:] in a.focus.results]
    return sorted(keys, key=patch_order)


def _pair_figure(i: int, run: RunResults, a: AnalysisResults, key: str) -> HeatmapFigure:
    exact, atp = a.focus_result("patching/" + key[4:]), a.focus_result(key)
    rho, diff = spearman(exact.normalized, atp.normalized), _max_diff(exact.normalized, atp.normalized)
    variant, metric = key.split("/")[2], key.split("/")[1]
    panels = [patch_panel(run, a, exact), patch_panel(run, a, atp)]
    panels[0].title, panels[1].title = f"exact: {panels[0].title}", f"AtP: {panels[1].title}"
    return figures.trimmed(
        HeatmapFigure(
            f"atp-{i}-{metric}-{variant}",
            f"{run.label}: AtP vs exact patching, {variant.replace('_', ' ')} ({metric}): "
            f"Spearman {_f(rho)}, max |difference| {_f(diff)}",
            panels,
            diverging=True,
            value_label="restored (1 = clean)",
            guide="Left: exact activation patching, one forward per cell; right: its first-order estimate from one "
            "backward pass (attribution patching), on the same colour scale.",
        )
    )


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of the cells finite in both (NaN with fewer than 2 or no spread)."""
    x, y = x.flatten().double(), y.flatten().double()
    ok = x.isfinite() & y.isfinite()
    if int(ok.sum()) < 2:
        return math.nan
    rx, ry = _ranks(x[ok]), _ranks(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float(rx @ ry) / denominator if denominator > 0 else math.nan


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks with ties given their average rank."""
    order = v.argsort()
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(len(v), dtype=v.dtype)
    for value in v.unique():
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _max_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    d = (x.double() - y.double()).abs()
    d = d[d.isfinite()]
    return float(d.max()) if d.numel() else math.nan


def _f(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "n/a"


# ---------------------------------------------------------------------------- over training


def _over_training(have: list[tuple[int, RunResults, AnalysisResults]]) -> list[LineFigure]:
    """One small chart per run and EAP result: its strongest edges' scores at every checkpoint."""
    charts = []
    for i, run, a in have:
        t = a.trajectory
        assert t is not None
        results = sorted({k.split("->")[0].rsplit("/", 1)[0] for k in t.scalars if "->" in k})
        for result in results:
            series = []
            for k, name in enumerate(n for n in t.scalars if n.startswith(result + "/") and "->" in n):
                points = [(s, v) for s, v in zip(t.steps, t.scalars[name]) if isinstance(v, (int, float))]
                label = name.removeprefix(result + "/")
                series.append(
                    Series(label, [p[0] for p in points], [float(p[1]) for p in points], color=k, dash=k // 10)
                )
            charts.append(
                LineFigure(
                    f"edges-over-training-{i}-{result.replace('/', '-')}",
                    f"{run.label}: top edges over training ({result})",
                    "step",
                    "edge score",
                    series,
                    guide="The scores of the last analysed checkpoint's strongest edges at every analysed checkpoint: "
                    "when each edge of the circuit formed.",
                    small=True,
                )
            )
    return charts
