"""Readings of attention on text (`text_heads/attention`, `text_heads/skip_trigrams`, saved by
`toylens analyze` for lm and classify runs): one table per run, a row per head with its type,
the scores behind it, the token pairs it attends along most and its top skip-trigrams; and the
summary-table row that names each run's head types. Token strings are shown quoted (so leading
spaces and newlines are visible); the page escapes them like any table text.
"""

from __future__ import annotations

import json
import math
from typing import Any

from toylens.report.analysis import AnalysisResults, missing_note, with_analysis
from toylens.report.collect import RunResults
from toylens.report.figures import Section, Table

READINGS, TRIGRAMS = "text_heads/attention", "text_heads/skip_trigrams"
SHOWN = 3
"""Pairs and skip-trigrams shown per head."""
COLUMNS = [
    "head",
    "type",
    "previous-token score",
    "positional share",
    "top offset (mean attention)",
    "BOS / first position",
    "punctuation",
    "earlier copies (duplicate)",
    "induction (repeated tokens)",
    "top (query → attended) pairs, share of attention",
    "top skip-trigrams: source … destination → output",
]
# The type names of TYPES (analysis.text_heads), in its priority order, and the fallback.
TYPE_ORDER = ("induction", "previous-token", "duplicate-token", "BOS", "punctuation", "positional", "content", "mixed")


def text_heads_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, a) for i, r, a in with_analysis(runs) if a.at_focus(READINGS) is not None]
    if not have:
        return None
    blocks = [_table(i, run, a) for i, run, a in have]
    guide = (
        "What each head reads in text, on the task's own examples: its type (thresholds below), how much of its "
        "attention goes to the previous token, to the first position or boundary tokens, to punctuation and to "
        "earlier copies of the current token, how much of it position alone explains (1 = the same pattern "
        "whatever the tokens), the token pairs it attends along most, and what its weights say it does "
        "(skip-trigrams of the layer-0 heads: a destination token attends back to a source, which raises an output)."
    )
    note = missing_note(runs, have, "readings of attention on text (lm and classify runs, `toylens analyze`)")
    return Section("text-heads", "Attention readings on text", guide, blocks, note)


def _table(index: int, run: RunResults, a: AnalysisResults) -> Table:
    th, st = a.focus_result(READINGS), a.at_focus(TRIGRAMS)
    n_layers, n_heads = th.positional_share.shape
    rows: list[list[Any]] = []
    for layer in range(n_layers):
        for head in range(n_heads):
            rows.append(
                [
                    f"L{layer}H{head}",
                    ", ".join(th.types[layer][head]) or "mixed",
                    float(th.scores["previous_token"][layer, head]),
                    float(th.positional_share[layer, head]),
                    _top_offset(th.offset_profile[layer, head].tolist()),
                    float(th.fractions["bos"][layer, head]),
                    float(th.fractions["punctuation"][layer, head]),
                    float(th.fractions["duplicate_token"][layer, head]),
                    float(th.repeated_induction[layer, head]),
                    "; ".join(f"{_q(x)} → {_q(y)} {share:.1%}" for x, y, share in th.pairs(layer, head)[:SHOWN]),
                    _trigrams(st, layer, head),
                ]
            )
    t = th.thresholds
    guide = (
        f"{th.n_queries} query positions of {th.n_examples} examples at {a.focus.name}. Types: induction "
        f"(induction score on repeated random tokens ≥ {t['induction']}), previous-token (score ≥ "
        f"{t['previous-token']}), duplicate-token (attention on earlier copies, where there are some, ≥ "
        f"{t['duplicate-token']}), BOS (≥ {t['BOS']} on the first position or boundary tokens), punctuation "
        f"(≥ {t['punctuation']} and ≥ {t['punctuation_over_baseline']:g}× the {th.punctuation_baseline:.3f} a "
        f"uniform head would give), positional (share ≥ {t['positional']}), content (share < {t['content']}). "
        + _trigram_note(st)
    )
    return Table(f"text-heads-{index}", COLUMNS, rows, title=f"{run.label}: heads reading text", guide=guide)


def _q(label: str) -> str:
    """A token string quoted, so that spaces and newlines show."""
    return json.dumps(label, ensure_ascii=False)


def _top_offset(profile: list[float]) -> str:
    finite = [(v, d) for d, v in enumerate(profile) if math.isfinite(v)]
    if not finite:
        return "—"
    value, offset = max(finite)
    return f"{offset} ({value:.2f})"


def _trigrams(st: Any, layer: int, head: int) -> str:
    if st is None or layer != st.layer:
        return "—"
    return "; ".join(f"{_q(a)} … {_q(b)} → {_q(c)}" for a, b, c, _ in st.trigrams(head)[:SHOWN])


def _trigram_note(st: Any) -> str:
    if st is None:
        return ""
    scope = (
        "the whole model (one attention-only layer)"
        if st.whole_model
        else "layer 0's direct path only (MLPs and later layers left out)"
    )
    return f"Skip-trigrams from the weights, for {scope}; candidates: {st.candidates}."


# ------------------------------------------------------------------------------------ summary


def head_types_summary(th: Any) -> str:
    """Each head's main type, grouped: "previous-token: L0H1; induction: L1H0, L1H2; content: L0H0"."""
    n_layers, n_heads = th.positional_share.shape
    by_type: dict[str, list[str]] = {}
    for layer in range(n_layers):
        for head in range(n_heads):
            by_type.setdefault(th.primary(layer, head), []).append(f"L{layer}H{head}")
    order = sorted(by_type, key=lambda k: TYPE_ORDER.index(k) if k in TYPE_ORDER else len(TYPE_ORDER))
    return "; ".join(f"{kind}: {', '.join(by_type[kind])}" for kind in order)


def text_heads_summary_rows(runs: list[RunResults]) -> list[list[Any]]:
    """The summary-table row naming every head's main type, when some run has the readings."""
    types = []
    for run in runs:
        a = run.extras.get("analysis")
        th = a.at_focus(READINGS) if a is not None else None
        types.append(head_types_summary(th) if th is not None else None)
    return [["head types (readings of text)", *types]] if any(types) else []
