"""The sweep table of a report: members ranked by the sweep's selection metric at their best
checkpoint, in the metric's direction (ties share a rank), unfinished members last (failed ones
at the very end); on hand-written sweep.json records and on a tiny real sweep."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import TINY

import toylens
from toylens.report.sweep import expand_sweeps, sweep_section
from toylens.rundir import RunDir
from toylens.sweep import run_sweep
from toylens.sweep.rank import ranking


def member(
    name: str, status: str = "done", best: float | None = None, metric: str = "val/loss", goal: str = "min", **values
) -> dict:
    """A sweep.json row as `toylens sweep` writes it; `values` are the varied fields."""
    row = {"name": name, "status": status, "action": "trained", "seed": 0, **values}
    row.update(error="boom" if status == "failed" else None, log=f"logs/{name}.log", run_dir=f"runs/{name}")
    if best is not None:
        row.update({"val/loss": best + 0.1, "epochs": 2, "wall_s": 1.0, "best_checkpoint": "epoch-0002"})
        row.update(best_metric=metric, best_goal=goal, best_value=best)
    return row


def write_sweep(path: Path, members: list[dict], parameters: dict | None = None) -> Path:
    path.mkdir(parents=True)
    spec = {"name": path.name, "base": "base.yaml", "parameters": parameters or {"train.lr": [0.1]}}
    (path / "sweep.json").write_text(json.dumps({"spec": spec, "counts": {}, "members": members}))
    return path


def table_of(path: Path):
    _, sweeps = expand_sweeps([path])
    section = sweep_section(sweeps)
    assert section is not None
    (table,) = section.blocks
    return section, table


def column(table, name: str) -> list:
    return [row[table.columns.index(name)] for row in table.rows]


def test_members_are_ranked_by_their_best_value_lowest_first_and_unfinished_last(tmp_path):
    members = [
        member("failed", "failed", **{"train.lr": 0.3}),
        member("b", best=2.0, **{"train.lr": 0.01}),
        member("pending", "pending", **{"train.lr": 0.2}),
        member("a", best=1.5, **{"train.lr": 0.001}),
        member("tie", best=2.0, **{"train.lr": 0.02}),
        member("c", best=3.25, **{"train.lr": 0.1}),
    ]
    section, table = table_of(write_sweep(tmp_path / "sw", members))
    assert column(table, "name") == ["a", "b", "tie", "c", "pending", "failed"]
    assert column(table, "rank") == [1, 2, 2, 4, None, None]  # ties share a rank, the next one skips
    assert column(table, "best val/loss") == [1.5, 2.0, 2.0, 3.25, None, None]
    assert table.columns[:6] == ["rank", "name", "train.lr", "seed", "status", "best_checkpoint"]
    assert column(table, "train.lr") == [0.001, 0.01, 0.02, 0.1, 0.2, 0.3]  # the varied values travel with their member
    assert column(table, "error")[-1] == "boom" and "best_goal" not in table.columns
    assert "val/loss at each member's best checkpoint, lowest first" in table.guide
    assert "(val/loss, lowest first)" in section.guide


def test_a_max_goal_ranks_the_highest_first(tmp_path):
    members = [member(n, best=v, metric="val/acc", goal="max") for n, v in (("low", 0.6), ("high", 0.9), ("mid", 0.7))]
    section, table = table_of(write_sweep(tmp_path / "acc", members))
    assert column(table, "name") == ["high", "mid", "low"] and column(table, "rank") == [1, 2, 3]
    assert "best val/acc" in table.columns and "(val/acc, highest first)" in section.guide


def test_members_without_a_common_metric_and_direction_are_not_ranked(tmp_path):
    mixed = [member("a", best=0.5, metric="val/acc", goal="max"), member("f", "failed"), member("b", best=2.0)]
    _, table = table_of(write_sweep(tmp_path / "mixed", mixed))
    assert column(table, "name") == ["a", "b", "f"] and column(table, "rank") == [None] * 3  # sweep order, failed last
    assert table.guide.startswith("Not ranked") and {"best_metric", "best_goal"} <= set(table.columns)
    old = [member("a", best=1.0), member("b", best=0.5)]
    for row in old:  # a sweep.json written before the direction was recorded
        row.pop("best_goal")
    assert ranking(old) is None


@pytest.mark.slow
def test_a_tiny_real_sweep_is_reported_ranked(tmp_path):
    base = copy.deepcopy(TINY)
    base.pop("name")
    base["train"].update(epochs=2, select_metric="test/acc")  # a max-goal metric: highest accuracy first
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"name": "sw", "base": "base.yaml", "parameters": {"train.lr": [0.0003, 0.003, 0.03]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run_sweep(tmp_path / "spec.yaml", tmp_path / "runs", jobs=2, device="cpu", progress=False)
    assert not result.failed

    best = {r["name"]: RunDir(r["run_dir"]).read_json("summary.json")["best"] for r in result.rows}
    assert {b["metric"] for b in best.values()} == {"test/acc"} and {b["goal"] for b in best.values()} == {"max"}
    expected = sorted(best, key=lambda name: -best[name]["value"])
    _, table = table_of(result.sweep_dir)
    assert column(table, "name") == expected

    page = toylens.report([result.sweep_dir], tmp_path / "sweep.html", png=False)
    html = page.path.read_text()
    sweep_table = html[html.index('id="table-sweep-sw"') :]
    sweep_table = sweep_table[: sweep_table.index("</table>")]
    assert re.findall(r"sw-lr[0-9.e-]+-seed0", sweep_table) == expected  # each name once, in rank order
    assert "test/acc at each member&#x27;s best checkpoint, highest first" in sweep_table
