"""Assemble sections into one self-contained HTML file: styles, script and data inline.

Tables are rendered here as HTML; figures become placeholders that the inline script draws from
the JSON data block. Every piece of text from a run (names, tokens, config values) is escaped
here or set as textContent by the script, so a token such as `</script>` cannot break the page.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

from toylens.report.figures import AttentionViewer, Block, CircuitGraph, Code, Section, Table, fmt, to_json
from toylens.report.svg import graph_html
from toylens.version import __version__

ASSETS = resources.files("toylens.report") / "assets"


def render_html(title: str, meta: str, sections: list[Section]) -> str:
    """The whole page as a string."""
    figures: dict[str, Any] = {}
    body = [_section_html(section, figures) for section in sections]
    nav = "\n".join(f'<a href="#sec-{s.id}">{html.escape(s.title)}</a>' for s in sections)
    values = {
        "VERSION": html.escape(__version__),
        "TITLE": html.escape(title),
        "META": html.escape(meta),
        "NAV": nav,
        "STYLE": _asset("report.css"),
        "BODY": "\n".join(body),
        "SCRIPT": _asset("report.js"),
        "DATA": script_json({"figures": figures}),
    }
    # One pass over the template: text inserted for one marker is never scanned for another.
    page = re.sub(r"__([A-Z]+)__", lambda m: values[m.group(1)], _asset("template.html"))
    return page


def script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no "</", "<!--" or "&" can end or alter it."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _section_html(section: Section, figures: dict[str, Any]) -> str:
    parts = [
        f'<section id="sec-{section.id}">',
        f"<h2>{html.escape(section.title)}</h2>",
        f'<p class="guide">{html.escape(section.guide)}</p>',
    ]
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    parts.append('<div class="grid">')
    for block in section.blocks:
        parts.append(_block_html(block, figures))
    parts.append("</div></section>")
    return "\n".join(parts)


def _block_html(block: Block, figures: dict[str, Any]) -> str:
    if isinstance(block, Table):
        return table_html(block)
    if isinstance(block, CircuitGraph):
        return graph_html(block)
    if isinstance(block, Code):
        return (
            f'<details class="config block wide" id="code-{html.escape(block.id)}"><summary>'
            f"{html.escape(block.title)}</summary><pre>{html.escape(block.text)}</pre></details>"
        )
    if block.id in figures:
        raise ValueError(f"two figures named {block.id!r}")
    figures[block.id] = to_json(block)
    wide = " wide" if isinstance(block, AttentionViewer) or getattr(block, "kind", "") == "heatmaps" else ""
    return f'<div class="block{wide}" id="fig-{html.escape(block.id)}" data-figure="{html.escape(block.id)}"></div>'


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        label = str(row[0])
        cls = ' class="diff"' if label.endswith(" *") else ""
        cells = "".join(_cell(fmt(v)) for v in row)
        rows.append(f"<tr{cls}>{cells}</tr>")
    title = f'<div class="fig-title">{html.escape(table.title)}</div>' if table.title else ""
    guide = f'<p class="fig-guide">{html.escape(table.guide)}</p>' if table.guide else ""
    return (
        f'<div class="block wide" id="table-{html.escape(table.id)}">{title}{guide}<div class="tablewrap">'
        f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div></div>'
    )


def _cell(text: str) -> str:
    """A table cell; long text (a warning, a description) wraps, numbers and names do not."""
    cls = ' class="long"' if len(text) > 40 else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")
