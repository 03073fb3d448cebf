"""The `toylens sweep` table ranks members like the report: best value first in the task's
direction, ties sharing a rank, failed members last and unranked."""

from __future__ import annotations

from toylens.sweep.runner import format_table


def _row(name, value, goal="min", status="done", **extra):
    return {
        "name": name,
        "status": status,
        "lr": extra.get("lr", 0.1),
        "best_metric": "val/loss",
        "best_goal": goal,
        "best_value": value,
        "val/loss": extra.get("final", value),
        "error": None,
    }


def _body(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()[1:]]


def test_ranked_by_best_value_in_the_tasks_direction():
    rows = [
        _row("a", 2.0),
        {"name": "f", "status": "failed", "error": "boom", "log": "f.log"},
        _row("b", 1.0),
        _row("c", 2.0),
    ]
    table = format_table(rows, varied=["lr"])
    assert table.splitlines()[0].split()[:3] == ["rank", "member", "status"] and "best val/loss" in table
    body = _body(table)
    assert [line[:2] for line in body[:3]] == [["1", "b"], ["2", "a"], ["2", "c"]]
    assert body[3][:2] == ["f", "failed"] and "boom (log: f.log)" in table.splitlines()[-1]  # no rank


def test_a_max_goal_ranks_highest_first():
    body = _body(format_table([_row("a", 0.5, "max"), _row("b", 0.9, "max")]))
    assert [line[:2] for line in body] == [["1", "b"], ["2", "a"]]


def test_without_a_shared_selection_metric_the_order_is_the_sweeps():
    rows = [_row("a", 2.0), _row("b", 1.0, goal=None)]
    rows[1]["best_metric"] = "val/acc"
    table = format_table(rows)
    assert [line[0] for line in _body(table)] == ["a", "b"] and "val/loss" in table.splitlines()[0]
