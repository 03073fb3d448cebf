"""Headline numbers per checkpoint, and the same numbers over all analysed checkpoints.

`summarize_checkpoint` reads the saved results of one checkpoint (never the model) and writes
`RUN/analysis/<checkpoint>/summary.json` (a `CheckpointSummary`): which results exist and a flat
table of scalars such as `head_scores/repeated/induction.max`. `write_trajectory` gathers every
checkpoint's scalars, ordered by training step, into `RUN/analysis/trajectory.json` (a
`Trajectory`): the series a report plots to show, e.g., the induction-head phase change.

Edge attribution over training: the trajectory also holds, for each EAP result
(`eap/<metric>/edges`, `eap/<metric>/edges_ig`), the score of the `TOP_EDGES` strongest edges of
the last checkpoint that has it, at every checkpoint that has it, as
`eap/<metric>/<result>/<writer>-><reader>` (e.g. `eap/logit_diff/edges_ig/L0H1->L1H0.k`): when
each edge of the final circuit formed. Scores are in metric units (not normalised by the clean -
corrupted gap, which is near 0 before the model learns the task).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from toylens.analysis.ablation import Ablation
from toylens.analysis.attention import HeadScores
from toylens.analysis.attribution import LogitLens
from toylens.analysis.circuits import Circuits
from toylens.analysis.composition import Composition
from toylens.analysis.edge_attribution import EdgeScores, Faithfulness
from toylens.analysis.patching import PatchGrid
from toylens.analysis.regularisation import Sparsity, WeightNorms
from toylens.rundir import RunDir
from toylens.rundir.results import Result, has_result, load_result


@dataclass
class CheckpointSummary(Result):
    checkpoint: str
    epoch: int
    step: int
    results: list[str]
    scalars: dict[str, float | str | None]


@dataclass
class Trajectory(Result):
    """`scalars[name][i]` is that scalar at `checkpoints[i]` (None where it was not computed)."""

    checkpoints: list[str]
    epochs: list[int]
    steps: list[int]
    scalars: dict[str, list[float | str | None]]


TOP_EDGES = 8
"""Edges per EAP result whose scores the trajectory follows over training."""
EDGE_RESULTS = ("edges", "edges_ig")


def _head_label(flat_index: int, n_heads: int) -> str:
    layer, head = divmod(flat_index, n_heads)
    return f"L{layer}H{head}"


def _best(prefix: str, grid: Tensor, out: dict[str, Any]) -> None:
    """Max over heads of a [layer, head] grid, and which head."""
    flat = grid.flatten().nan_to_num(float("-inf"))
    i = int(flat.argmax())
    value = float(flat[i])
    out[f"{prefix}.max"] = value if math.isfinite(value) else None
    out[f"{prefix}.argmax"] = _head_label(i, grid.shape[-1]) if math.isfinite(value) else None


def _scalars(run: RunDir, base: str, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        r = load_result(run, f"{base}/{name}")
        if isinstance(r, HeadScores):
            for score, grid in r.scores.items():
                _best(f"{name}/{score}", grid, out)
        elif isinstance(r, Circuits):
            _best("circuits/copying", r.copying, out)
        elif isinstance(r, Composition):
            for c, scores in (("q", r.q), ("k", r.k), ("v", r.v)):
                best_source = scores.nan_to_num(float("-inf")).amax((0, 1))  # per receiving head
                _best(f"composition/{c}", best_source, out)
                out[f"composition/{c}.baseline"] = r.baseline_mean[c]
        elif isinstance(r, Ablation):
            out[f"{name}.base_loss"] = r.base_loss
            _best(f"{name}/heads", r.heads, out)
        elif isinstance(r, LogitLens):
            out["logit_lens/final_loss"] = float(r.loss[-1])
        elif isinstance(r, PatchGrid) and name == "patching/resid_pre":
            out["patching/clean"], out["patching/corrupted"] = r.clean, r.corrupted
        elif isinstance(r, Faithfulness):
            out[f"{name}.recovered"] = r.recovered if math.isfinite(r.recovered) else None
            out[f"{name}.n_edges"] = float(r.n_edges)
        elif isinstance(r, WeightNorms):
            out["weight_norms/total_matrices"] = r.total_matrices
        elif isinstance(r, Sparsity):
            for layer, (frac, l1) in enumerate(zip(r.fraction_active.tolist(), r.l1.tolist())):
                out[f"sparsity/L{layer}.fraction_active"], out[f"sparsity/L{layer}.l1"] = frac, l1
    return out


def summarize_checkpoint(run: RunDir, checkpoint: str) -> CheckpointSummary:
    """Write RUN/analysis/<checkpoint>/summary.json from the results saved there."""
    base = f"analysis/{checkpoint}"
    results = sorted(
        rel.removeprefix(base + "/").removesuffix(".json")
        for rel in run.manifest()["files"]
        if rel.startswith(base + "/") and rel.endswith(".json") and rel != f"{base}/summary.json"
    )
    epoch, step = _position(run, checkpoint)
    summary = CheckpointSummary(
        checkpoint=checkpoint, epoch=epoch, step=step, results=results, scalars=_scalars(run, base, results)
    )
    summary.save(run, f"{base}/summary")
    return summary


def _position(run: RunDir, checkpoint: str) -> tuple[int, int]:
    info = run.manifest()["checkpoints"].get(checkpoint, {})
    return int(info.get("epoch", -1)), int(info.get("step", -1))


def write_trajectory(run: RunDir) -> Trajectory:
    """Write RUN/analysis/trajectory.json from every checkpoint's summary, ordered by step."""
    files = run.manifest()["files"]
    names = sorted(
        {rel.split("/")[1] for rel in files if rel.startswith("analysis/") and rel.endswith("/summary.json")}
    )
    summaries = [
        CheckpointSummary.load(run, f"analysis/{n}/summary") for n in names if has_result(run, f"analysis/{n}/summary")
    ]
    # "final" only in runs analysed by toylens 0.1, which kept the final weights' results apart.
    summaries.sort(key=lambda s: (s.step, s.checkpoint == "final"))
    keys = sorted({k for s in summaries for k in s.scalars})
    scalars = {k: [s.scalars.get(k) for s in summaries] for k in keys}
    traj = Trajectory(
        checkpoints=[s.checkpoint for s in summaries],
        epochs=[s.epoch for s in summaries],
        steps=[s.step for s in summaries],
        scalars={**scalars, **_edge_series(run, summaries)},
    )
    traj.save(run, "analysis/trajectory")
    return traj


def edge_key(result: str, writer: str, reader: str) -> str:
    """The trajectory scalar of one edge of an EAP result (e.g. "eap/logit_diff/edges_ig")."""
    return f"{result}/{writer}->{reader}"


def _edge_series(run: RunDir, summaries: list[CheckpointSummary]) -> dict[str, list[float | str | None]]:
    """The scores of the TOP_EDGES strongest edges of each EAP result's last checkpoint, at every
    checkpoint (None where a checkpoint lacks the result or the edge)."""
    names = sorted(
        {r for s in summaries for r in s.results if r.startswith("eap/") and r.rsplit("/", 1)[-1] in EDGE_RESULTS}
    )
    out: dict[str, list[float | str | None]] = {}
    for name in names:
        loaded: list[EdgeScores | None] = [
            EdgeScores.load(run, f"analysis/{s.checkpoint}/{name}") if name in s.results else None for s in summaries
        ]
        last = next(e for e in reversed(loaded) if e is not None)
        for writer, reader, _ in last.top_edges(TOP_EDGES):
            out[edge_key(name, writer, reader)] = [_edge_score(e, writer, reader) for e in loaded]
    return out


def _edge_score(edges: EdgeScores | None, writer: str, reader: str) -> float | None:
    if edges is None or writer not in edges.writers or reader not in edges.readers:
        return None
    value = float(edges.scores[edges.writers.index(writer), edges.readers.index(reader)])
    return value if math.isfinite(value) else None
