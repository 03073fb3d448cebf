"""Sections of the interpretability results: the attention viewer, QK and OV circuits,
composition scores, direct logit attribution and the logit lens, and ablation tables (the
patching grids are `report.patching`). Each reads the focus checkpoint's results (the attention viewer also earlier
checkpoints, within a size budget) and is left out when no run has them.
"""

from __future__ import annotations

import math
from typing import Any

from toylens.report.analysis import AnalysisResults, head_labels, missing_note, with_analysis
from toylens.report.collect import RunResults
from toylens.report.figures import (
    AttentionExample,
    AttentionRun,
    AttentionViewer,
    Heatmap,
    HeatmapFigure,
    LineFigure,
    Section,
    Series,
    Table,
    trimmed,
)

ATTENTION_BUDGET = 600_000
"""Attention probabilities in one report, at most (about 3.5 MB of page)."""
ATTENTION_SOURCES = {"attention/task": "task", "attention/repeated": "repeated"}


# --------------------------------------------------------------------------- attention viewer


def attention_section(runs: list[RunResults]) -> Section | None:
    have = [
        (i, r, a)
        for i, r, a in with_analysis(runs)
        if any(k in c.results for c in a.checkpoints for k in ATTENTION_SOURCES)
    ]
    if not have:
        return None
    per_run = ATTENTION_BUDGET // len(have)
    viewer_runs = []
    for i, run, a in have:
        for c in _checkpoints_within(a, per_run):
            examples = [
                _example(c.results[k], e, src)
                for k, src in ATTENTION_SOURCES.items()
                if k in c.results
                for e in range(len(c.results[k].labels))
            ]
            viewer_runs.append(AttentionRun(run.label, f"{c.name}, step {c.step}", examples, color=i))
    guide = (
        "Where each query position (rows) attends among the key positions (columns) for a few inputs: the task's "
        "own examples and repeated random tokens, at the analysed checkpoints; hover for the probability."
    )
    viewer = AttentionViewer("attention-viewer", viewer_runs)
    return Section("attention", "Attention patterns", guide, [viewer], missing_note(runs, have, "attention patterns"))


def _checkpoints_within(a: AnalysisResults, budget: int) -> list[Any]:
    """Evenly spaced analysed checkpoints whose patterns fit the budget (the last one always)."""
    with_patterns = [c for c in a.checkpoints if any(k in c.results for k in ATTENTION_SOURCES)]
    size = max(sum(c.results[k].patterns.numel() for k in ATTENTION_SOURCES if k in c.results) for c in with_patterns)
    n = max(1, min(len(with_patterns), budget // max(size, 1)))
    if n >= len(with_patterns):
        return with_patterns
    picks = (
        {round(j * (len(with_patterns) - 1) / max(n - 1, 1)) for j in range(n)} if n > 1 else {len(with_patterns) - 1}
    )
    return [with_patterns[j] for j in sorted(picks)]


def _example(result: Any, e: int, source: str) -> AttentionExample:
    pattern = result.patterns[e]  # [layer, head, query, key]
    rounded = [[[[round(v, 3) for v in row] for row in head] for head in layer] for layer in pattern.tolist()]
    return AttentionExample(tokens=[str(t) for t in result.labels[e]], patterns=rounded, source=f"{source} #{e}")


# ------------------------------------------------------------------------------------ circuits


def circuits_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, a) for i, r, a in with_analysis(runs) if a.at_focus("circuits") is not None]
    if not have:
        return None
    blocks: list[Any] = []
    for field_name, title, axes, guide in (
        (
            "qk_tokens",
            "QK circuit over tokens",
            ("key token", "query token"),
            "How much a query token wants to attend to each key token through the weights alone (W_E W_Q W_Kᵀ W_Eᵀ).",
        ),
        (
            "qk_positions",
            "QK circuit over positions",
            ("key position", "query position"),
            "The same through the positional embeddings: a bright diagonal band below the diagonal is a "
            "previous-token head.",
        ),
        (
            "ov_tokens",
            "OV circuit: attended token → output logits",
            ("output token", "attended token"),
            "What attending to a token (rows) does to each output logit (columns); a bright diagonal means the "
            "head copies.",
        ),
    ):
        panels = []
        for _, run, a in have:
            c = a.at_focus("circuits")
            grid = getattr(c, field_name)
            rows, cols = _circuit_labels(c, field_name, grid)
            for label, matrix in zip(head_labels(*grid.shape[:2]), grid.flatten(0, 1)):
                panels.append(Heatmap(_panel_title(run, a, label, len(have)), _z(matrix), cols, rows, axes[0], axes[1]))
        blocks.append(
            trimmed(
                HeatmapFigure(
                    f"circuit-{field_name}",
                    title,
                    panels,
                    guide=guide,
                    diverging=True,
                    shared_scale=False,
                    value_label="logit" if "ov" in field_name else "score",
                )
            )
        )
    blocks.append(_copying_table(have))
    guide = (
        "Circuits read from the weights, no data involved (LayerNorm gains folded in where the model has "
        "LayerNorm); each panel has its own colour scale, centred on 0."
    )
    return Section("circuits", "QK and OV circuits", guide, blocks, missing_note(runs, have, "circuits"))


def _circuit_labels(c: Any, field_name: str, grid: Any) -> tuple[list[str], list[str]]:
    n_rows, n_cols = grid.shape[-2:]
    if field_name == "qk_positions":
        return [str(p) for p in range(n_rows)], [str(p) for p in range(n_cols)]
    tokens = [str(t) for t in c.token_labels][:n_rows]
    cols = tokens[:n_cols] if field_name == "qk_tokens" else [str(t) for t in c.out_labels][:n_cols]
    return tokens, cols


def _copying_table(have: list[tuple[int, RunResults, AnalysisResults]]) -> Table:
    rows = []
    for _, run, a in have:
        c = a.focus_result("circuits")
        for label, value in zip(head_labels(*c.copying.shape), c.copying.flatten().tolist()):
            rows.append([f"{run.label} {label}", _num(value)])
    return Table(
        "copying-scores",
        ["head", "copying score"],
        rows,
        title="OV copying scores",
        guide="Sum of the OV circuit's eigenvalues over the sum of their absolute values: near 1 for a head "
        "that copies the attended token to the output, near -1 for one that suppresses it.",
    )


# --------------------------------------------------------------------------------- composition


def composition_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, a) for i, r, a in with_analysis(runs) if a.at_focus("composition") is not None]
    if not have:
        return None
    blocks: list[Any] = []
    for kind, what in (("k", "keys"), ("q", "queries"), ("v", "values")):
        panels = []
        for _, run, a in have:
            comp = a.focus_result("composition")
            grid = getattr(comp, kind)  # [layer1, head1, layer2, head2]
            n_layers, n_heads = grid.shape[:2]
            labels = head_labels(n_layers, n_heads)
            flat = grid.reshape(n_layers * n_heads, n_layers * n_heads).T  # rows: receiving head (layer2, head2)
            receivers = range(n_heads, n_layers * n_heads)  # layer-0 heads receive nothing
            senders = range(0, (n_layers - 1) * n_heads)
            z = [[_num(flat[r, s].item()) for s in senders] for r in receivers]
            panels.append(
                Heatmap(
                    f"{run.label} (baseline {comp.baseline_mean[kind]:.3f})",
                    z,
                    [labels[s] for s in senders],
                    [labels[r] for r in receivers],
                    "writing head",
                    "reading head",
                )
            )
        blocks.append(
            HeatmapFigure(
                f"composition-{kind}",
                f"{kind.upper()}-composition",
                panels,
                value_label="score",
                guide=f"How much a later head's {what} read what an earlier head writes; compare with "
                "the random-matrix baseline in each title.",
            )
        )
    guide = (
        "Composition scores between heads of different layers (Elhage et al.): K-composition of a layer-1 head "
        "with a layer-0 previous-token head is the signature of an induction circuit."
    )
    return Section(
        "composition",
        "Composition between layers",
        guide,
        blocks,
        missing_note(runs, have, "composition scores (one-layer models have none)"),
    )


# --------------------------------------------------------------------------------- attribution


def attribution_section(runs: list[RunResults]) -> Section | None:
    dla = [(i, r, a) for i, r, a in with_analysis(runs) if a.at_focus("logit_attribution") is not None]
    lens = [(i, r, a) for i, r, a in with_analysis(runs) if a.at_focus("logit_lens") is not None]
    if not dla and not lens:
        return None
    blocks: list[Any] = (_dla_blocks(dla) if dla else []) + ([_lens_figure(lens)] if lens else [])
    guide = "Which components write the correct answer directly into the logits, and from which layer on it is there."
    return Section(
        "attribution",
        "Direct logit attribution and logit lens",
        guide,
        blocks,
        missing_note(runs, dla or lens, "attribution results"),
    )


def _dla_blocks(dla: list[tuple[int, RunResults, AnalysisResults]]) -> list[Any]:
    """Direct logit attribution: each component's total, and by position (a panel per run)."""
    components = list(dict.fromkeys(lab for _, _, a in dla for lab in a.focus_result("logit_attribution").labels))
    rows = [[comp, *[_component_total(a, comp) for _, _, a in dla]] for comp in components]
    total = Table(
        "dla-total",
        ["component", *[r.label for _, r, _ in dla]],
        rows,
        title="Direct logit attribution, mean over answer positions",
        guide="Each component's direct contribution to the correct answer's logit, relative to "
        f"the baseline ({dla[0][2].focus_result('logit_attribution').baseline}).",
    )
    panels = [
        Heatmap(run.label, _z(r.by_pos), list(r.pos_labels), list(r.labels), "position", "component")
        for _, run, a in dla
        if (r := a.at_focus("logit_attribution")) is not None
    ]
    by_pos = HeatmapFigure(
        "dla-by-pos",
        "Direct logit attribution by position",
        panels,
        diverging=True,
        value_label="logit",
        guide="Which component pushes up the right answer at which position (red: up, blue: down).",
    )
    return [total, trimmed(by_pos)]


def _lens_figure(lens: list[tuple[int, RunResults, AnalysisResults]]) -> LineFigure:
    """The logit lens: the loss read out after each layer, a line per run."""
    series = []
    for i, run, a in lens:
        r = a.focus_result("logit_lens")
        series.append(Series(run.label, list(range(len(r.labels))), [_num(v) for v in r.loss.tolist()], color=i))
    ticks = max((list(a.focus_result("logit_lens").labels) for _, _, a in lens), key=len)
    return LineFigure(
        "logit-lens",
        "Logit lens: loss read out after each layer",
        "read out at",
        "loss",
        series,
        x_ticks=ticks,
        guide="The loss if the residual stream were unembedded at that point: where the answer becomes readable.",
    )


def _component_total(a: AnalysisResults, component: str) -> float | None:
    r = a.focus_result("logit_attribution")
    return _num(r.total[r.labels.index(component)].item()) if component in r.labels else None


# ------------------------------------------------------------------------------------ ablation


def ablation_section(runs: list[RunResults]) -> Section | None:
    have = [(i, r, a) for i, r, a in with_analysis(runs) if any(k.startswith("ablation/") for k in a.focus.results)]
    if not have:
        return None
    kinds = [k for k in ("zero", "mean", "resample") if any(f"ablation/{k}" in a.focus.results for _, _, a in have)]
    head_rows, neuron_rows = [], []
    for _, run, a in have:
        results = {k: a.at_focus(f"ablation/{k}") for k in kinds}
        first = next(a.focus_result(f"ablation/{k}") for k in kinds if f"ablation/{k}" in a.focus.results)
        for h, label in enumerate(head_labels(*first.heads.shape)):
            head_rows.append([f"{run.label} {label}", *[_flat(r.heads, h) if r else None for r in results.values()]])
        neuron_rows += _top_neurons(run, results, kinds)
    blocks: list[Any] = [
        Table(
            "ablation-heads",
            ["head", *[f"{k} ablation" for k in kinds]],
            head_rows,
            title="Loss change when a head is ablated (nats)",
            guide="Zero replaces the head's output by 0, mean by its mean over the data, resample by "
            "its output on another input; a large increase marks a head the model relies on.",
        )
    ]
    if neuron_rows:
        blocks.append(
            Table(
                "ablation-neurons",
                ["MLP neuron", *[f"{k} ablation" for k in kinds]],
                neuron_rows,
                title="The MLP neurons whose ablation costs the most loss (nats)",
                guide="The ten neurons of each run with the largest loss increase under mean ablation.",
            )
        )
    guide = "Knock one component out at a time and measure how much the loss on the task's data goes up."
    return Section("ablation", "Ablations", guide, blocks, missing_note(runs, have, "ablation results"))


def _top_neurons(run: RunResults, results: dict[str, Any], kinds: list[str]) -> list[list[Any]]:
    key = results.get("mean") or next(r for r in results.values() if r is not None)
    if key.neurons.numel() == 0:
        return []
    flat = key.neurons.flatten().nan_to_num(float("-inf"))
    top = flat.topk(min(10, flat.numel())).indices.tolist()
    n_neurons = key.neurons.shape[-1]
    return [
        [
            f"{run.label} L{j // n_neurons}N{j % n_neurons}",
            *[_flat(results[k].neurons, j) if results[k] is not None else None for k in kinds],
        ]
        for j in top
    ]


# ------------------------------------------------------------------------------------- helpers


def _panel_title(run: RunResults, a: AnalysisResults, head: str, n_runs: int) -> str:
    return f"{run.label} {head}" if n_runs > 1 else f"{head} ({a.focus.name})"


def _z(matrix: Any) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in matrix.tolist()]


def _flat(t: Any, j: int) -> float | None:
    return _num(t.flatten()[j].item())


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
