"""A `CircuitGraph` as inline SVG markup, written into the page by `html.py`.

The graph is static, so it is drawn here rather than by the page's script: the HTML holds it as
it is (readable without JavaScript, and testable by counting its elements). Rows of nodes from
the bottom (embeddings) to the top (logits); each edge a curve from the top of its writer to the
bottom of its reader, at the reader's named input (a head's q, k or v) when it has one; width by
|score| relative to the graph's largest, red for a positive score and blue for a negative one
(the heatmaps' colours); hovering an edge or node shows its <title>. Every text is escaped.
`png.py` draws the same layout and curves (`layout`, `edge_curves`) with matplotlib.
"""

from __future__ import annotations

import html

from toylens.report.figures import CircuitGraph, GraphEdge, GraphNode, fmt

COLUMN = 92  # px between node centres in a row
ROW = 96  # px between rows
NODE_W, NODE_H = 70, 30
LEFT, TOP = 70, 14  # room for the row labels; above the top row
POSITIVE, NEGATIVE = "#b2182b", "#2166ac"
MAX_WIDTH = 7.0  # stroke width of the strongest edge


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def layout(graph: CircuitGraph) -> tuple[dict[str, tuple[float, float]], float, float]:
    """The centre (x, y) of every node, and the drawing's width and height; each row centred."""
    per_row: dict[int, int] = {}
    for n in graph.nodes:
        per_row[n.row] = max(per_row.get(n.row, 0), n.column + 1)
    widest = max(per_row.values(), default=1)
    n_rows = max(len(graph.row_labels), max(per_row, default=0) + 1)
    width = float(LEFT + widest * COLUMN + 10)
    height = float(TOP + n_rows * ROW)
    centre: dict[str, tuple[float, float]] = {}
    for n in graph.nodes:
        offset = (widest - per_row[n.row]) * COLUMN / 2
        x = LEFT + offset + n.column * COLUMN + COLUMN / 2
        y = height - ROW / 2 - n.row * ROW
        centre[n.id] = (x, y)
    return centre, width, height


def _port_x(node: GraphNode, x: float, port: str) -> float:
    """Where an edge into `port` ends: the ports spread along the node's bottom side."""
    if port not in node.ports:
        return x
    k, n = node.ports.index(port), len(node.ports)
    return x - NODE_W / 2 + NODE_W * (k + 0.5) / n


def edge_curves(graph: CircuitGraph) -> list[tuple[GraphEdge, tuple[float, float, float, float, float], str, float]]:
    """Each edge, weakest first (so the strongest lie on top): its curve (x1, y1, x2, y2, bend)
    from the top of its writer to its reader's input, bending `bend` px vertically at both ends;
    its colour and stroke width."""
    centre, _, _ = layout(graph)
    nodes = {n.id: n for n in graph.nodes}
    strongest = max((abs(e.score) for e in graph.edges), default=0.0) or 1.0
    out = []
    for e in sorted(graph.edges, key=lambda e: abs(e.score)):
        (x1, y1), (x2, y2) = centre[e.source], centre[e.target]
        x2 = _port_x(nodes[e.target], x2, e.port)
        y1, y2 = y1 - NODE_H / 2, y2 + NODE_H / 2
        bend = max(24.0, (y1 - y2) / 2)
        colour = POSITIVE if e.score >= 0 else NEGATIVE
        out.append((e, (x1, y1, x2, y2, bend), colour, 0.8 + (MAX_WIDTH - 0.8) * abs(e.score) / strongest))
    return out


def graph_svg(graph: CircuitGraph) -> str:
    """The <svg> element of the graph."""
    centre, width, height = layout(graph)
    parts = [
        f'<svg class="circuit-graph" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{_esc(graph.title)}">'
    ]
    for row, label in enumerate(graph.row_labels):
        y = height - ROW / 2 - row * ROW
        parts.append(f'<text x="4" y="{y + 4:.1f}">{_esc(label)}</text>')
    parts.append('<g class="edges" fill="none">')
    for e, (x1, y1, x2, y2, bend), colour, w in edge_curves(graph):
        into = f"{e.target}.{e.port}" if e.port else e.target
        parts.append(
            f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 - bend:.1f} {x2:.1f},{y2 + bend:.1f} '
            f'{x2:.1f},{y2:.1f}" stroke="{colour}" stroke-width="{w:.2f}" stroke-opacity="0.75">'
            f"<title>{_esc(e.source)} → {_esc(into)}: {_esc(fmt(e.score))}</title></path>"
        )
    parts.append("</g>")
    used = {e.source for e in graph.edges} | {e.target for e in graph.edges}
    for n in graph.nodes:
        x, y = centre[n.id]
        stroke, fill = ("#1d2330", "#ffffff") if n.id in used else ("#c5cad3", "#f6f7f9")
        parts.append(
            f'<g class="node"><title>{_esc(n.label)}</title><rect x="{x - NODE_W / 2:.1f}" y="{y - NODE_H / 2:.1f}" '
            f'width="{NODE_W}" height="{NODE_H}" rx="4" fill="{fill}" stroke="{stroke}"/>'
            f'<text x="{x:.1f}" y="{y + (-2 if n.ports else 4):.1f}" text-anchor="middle">{_esc(n.label)}</text>'
        )
        for port in n.ports:
            parts.append(
                f'<text class="port" x="{_port_x(n, x, port):.1f}" y="{y + NODE_H / 2 - 3:.1f}" '
                f'text-anchor="middle" font-size="9">{_esc(port)}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def graph_html(graph: CircuitGraph) -> str:
    """The block: title, guide, the graph and its facts table beside it."""
    facts = "".join(f"<tr><td>{_esc(label)}</td><td>{_esc(fmt(value))}</td></tr>" for label, value in graph.facts)
    table = f'<table class="data facts"><tbody>{facts}</tbody></table>' if facts else ""
    guide = f'<p class="fig-guide">{_esc(graph.guide)}</p>' if graph.guide else ""
    return (
        f'<div class="block wide graph" id="graph-{_esc(graph.id)}"><div class="fig-title">{_esc(graph.title)}</div>'
        f'{guide}<div class="graph-row">{graph_svg(graph)}{table}</div></div>'
    )
