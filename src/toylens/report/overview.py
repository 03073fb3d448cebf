"""Sections built from what every run directory has: the summary table, training curves and
weight norms over checkpoints. Each builder returns a `Section`, or None when no run has the
results it needs (the report then leaves the section out).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from toylens.config import flatten
from toylens.report.collect import RunResults
from toylens.report.figures import LineFigure, Section, Series, Table
from toylens.rundir import epoch_name

# Settings worth seeing for every run even when the runs agree on them.
KEY_FIELDS = ("train.weight_decay", "train.l1.coef", "train.lr", "train.epochs", "train.batch_size", "seed")
METRIC_TITLES = {
    "loss": "Loss",
    "acc": "Accuracy",
    "list_acc": "Whole-list accuracy",
    "ppl": "Perplexity",
    "l1": "L1 penalty on activations",
}
# Parameter kinds in forward order; norms of a kind are combined over layers and heads.
PARAM_KINDS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U")


def summary_section(runs: list[RunResults], extra_rows: Sequence[list[Any]] = ()) -> Section:
    """Runs side by side: task, architecture, differing settings, final metrics, norms."""
    rows: list[list[Any]] = [
        ["status", *[_status(r) for r in runs]],
        ["task", *[r.task for r in runs]],
        ["architecture", *[r.architecture() for r in runs]],
        ["parameters", *[r.weight_norms[-1].n_params if r.weight_norms else None for r in runs]],
    ]
    differing = config_differences(runs)
    flats = [flatten(r.config) for r in runs]
    for key in differing + [k for k in KEY_FIELDS if k not in differing]:
        rows.append([key + (" *" if key in differing else ""), *[f.get(key) for f in flats]])
    for key in final_metric_keys(runs):
        rows.append([f"final {key}", *[r.final.get(key) for r in runs]])
    rows += baseline_rows(runs)
    rows.append(
        ["weight norm (L2, all parameters)", *[r.weight_norms[-1].total if r.weight_norms else None for r in runs]]
    )
    rows += list(extra_rows)
    rows.append(["training steps", *[r.final.get("step") for r in runs]])
    rows.append(["training wall time (s)", *[(r.summary or {}).get("wall_s") for r in runs]])
    guide = (
        (
            "One column per run: settings marked * differ between the runs, and the final metrics are "
            "measured after the last epoch on each split."
        )
        if len(runs) > 1
        else ("The run's settings and its metrics after the last epoch on each split.")
    )
    table = Table("summary", ["", *[r.label for r in runs]], rows)
    return Section("summary", "Summary", guide, [table])


def baseline_rows(runs: list[RunResults]) -> list[list[Any]]:
    """For runs whose task saved baselines at training time (summary.json `baselines`; lm: the
    unigram loss of each split): each baseline, and the test loss at the best checkpoint (the one
    the selection metric picked) against the test unigram loss. Other runs, and runs trained before
    baselines were saved, show none."""
    saved = [(r.summary or {}).get("baselines") or {} for r in runs]
    if not any(saved):
        return []
    best = [_best_row(r) if b else None for r, b in zip(runs, saved)]  # only beside a baseline
    loss = [row.get("test/loss") if row else None for row in best]
    unigram = [b.get("test/unigram_loss") for b in saved]
    rows: list[list[Any]] = [["best checkpoint", *[_best_name(r) if b else None for r, b in zip(runs, saved)]]]
    rows.append(["test/loss at the best checkpoint", *loss])
    rows += [[f"baseline {key}", *[b.get(key) for b in saved]] for key in sorted(set().union(*saved))]
    gap = [
        x - u if isinstance(x, (int, float)) and isinstance(u, (int, float)) else None for x, u in zip(loss, unigram)
    ]
    if any(g is not None for g in gap):
        rows.append(["test/loss at the best checkpoint − unigram (below 0: beats it)", *gap])
    return rows


def _best_row(run: RunResults) -> dict[str, Any] | None:
    """The metrics row of the run's best checkpoint (None before the run has finished)."""
    best = (run.summary or {}).get("best")
    if not best:
        return None
    return next((row for row in run.metrics if epoch_name(int(row["epoch"])) == best["checkpoint"]), None)


def _best_name(run: RunResults) -> str | None:
    best = (run.summary or {}).get("best")
    return f"{best['checkpoint']} (by {best['metric']})" if best else None


def training_section(runs: list[RunResults]) -> Section | None:
    """Every logged metric over training steps: one figure per metric, one line per run and split."""
    by_metric: dict[str, list[Series]] = defaultdict(list)
    for i, run in enumerate(runs):
        for key in sorted({k for row in run.metrics for k in row if "/" in k}):
            split, metric = key.split("/", 1)
            points = [(row["step"], row[key]) for row in run.metrics if key in row]
            label = f"{run.label} {split}" if len(runs) > 1 else split
            by_metric[metric].append(
                Series(
                    label, [p[0] for p in points], [p[1] for p in points], color=i, dash=1 if split == "train" else 0
                )
            )
    if not by_metric:
        return None
    order = sorted(by_metric, key=lambda m: (list(METRIC_TITLES).index(m) if m in METRIC_TITLES else 99, m))
    figures = [
        LineFigure(
            f"train-{m}",
            METRIC_TITLES.get(m, m),
            "step",
            m,
            by_metric[m],
            log_y=m in ("loss", "ppl") and _spans_decades(by_metric[m]),
        )
        for m in order
    ]
    guide = (
        "Metrics after every epoch (step 0 is the initialisation): dashed lines are the training split, "
        "solid ones held-out data, so a widening gap between them means overfitting."
    )
    return Section("training", "Training curves", guide, figures)


def weights_section(runs: list[RunResults]) -> Section | None:
    """Weight norms over checkpoints: all parameters together, then each kind of matrix."""
    if not any(r.weight_norms for r in runs):
        return None
    total = [
        Series(r.label, [c.step for c in r.weight_norms], [c.total for c in r.weight_norms], color=i)
        for i, r in enumerate(runs)
        if r.weight_norms
    ]
    figures = [
        LineFigure(
            "weights-total",
            "Weight norm, all parameters",
            "step",
            "L2 norm",
            total,
            guide="Weight decay pulls this down; a run without it usually keeps growing.",
        )
    ]
    for kind in PARAM_KINDS:
        series = []
        for i, run in enumerate(runs):
            ys = [_kind_norm(c.norms, kind) for c in run.weight_norms]
            if run.weight_norms and any(y is not None for y in ys):
                series.append(Series(run.label, [c.step for c in run.weight_norms], ys, color=i))
        if series:
            figures.append(LineFigure(f"weights-{kind}", f"‖{kind}‖", "step", "Frobenius norm", series, small=True))
    guide = (
        "Frobenius norms of the weights at every checkpoint, combined over layers and heads for each "
        "kind of matrix: where training and regularisation put the model's capacity."
    )
    return Section("weights", "Weight norms over training", guide, figures)


def config_differences(runs: list[RunResults]) -> list[str]:
    """Dotted config fields whose values are not the same in every run (the name excluded)."""
    if len(runs) < 2:
        return []
    flats = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flats) - {"name"})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def final_metric_keys(runs: list[RunResults]) -> list[str]:
    keys = {k for r in runs for k, v in r.final.items() if "/" in k and isinstance(v, (int, float))}
    return sorted(keys, key=lambda k: (k.startswith("train/"), k))


def _status(run: RunResults) -> str:
    if run.summary is not None:
        return "finished"
    epochs = run.config["train"]["epochs"]
    return f"training ({run.final.get('epoch', 0)} of {epochs} epochs)"


def _kind_norm(norms: dict[str, float], kind: str) -> float | None:
    values = [v for name, v in norms.items() if name.rsplit(".", 1)[-1] == kind]
    return math.sqrt(sum(v * v for v in values)) if values else None


def _spans_decades(series: list[Series]) -> bool:
    ys = [y for s in series for y in s.y if y is not None and y > 0]
    return bool(ys) and max(ys) / min(ys) > 30
