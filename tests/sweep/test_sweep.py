"""Sweeps: spec expansion (grid, random, names, one-line errors), and an end-to-end local sweep in
which one member fails, one was interrupted earlier, W&B logs offline, and a rerun trains only
what is missing."""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import subprocess
import sys

import pytest
import yaml
from conftest import TINY, wandb_run

from toylens import train
from toylens.errors import ToylensError
from toylens.rundir import RunDir
from toylens.sweep import expand, load_sweep, run_sweep
from toylens.train.callbacks import TrainCallback


def write_spec(tmp_path, **fields) -> object:
    base = copy.deepcopy(TINY)
    base.pop("name")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"name": "sw", "base": "base.yaml", **fields}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def members_of(path):
    spec, root = load_sweep(path)
    return expand(spec, root, str(path))


def test_grid_is_every_combination_times_every_seed(tmp_path):
    path = write_spec(
        tmp_path,
        parameters={"train.weight_decay": [0.0, 0.1], "train.l1.hooks": [[], ["blocks.0.hook_resid_pre"]]},
        seeds=[0, 7],
    )
    members = members_of(path)
    assert len(members) == 8 and len({m.name for m in members}) == 8
    # values that do not spell well (lists) are named by a short hash
    assert re.fullmatch(r"sw-weight_decay0-hooks[0-9a-f]{8}-seed0", members[0].name)
    assert re.fullmatch(r"sw-weight_decay0.1-hooks[0-9a-f]{8}-seed7", members[-1].name)
    combos = {(m.config.train.weight_decay, tuple(m.config.train.l1.hooks), m.config.seed) for m in members}
    assert len(combos) == 8
    assert all(m.config.task.n_train == 600 and m.config.name == m.name for m in members)
    assert members_of(path) == members  # deterministic


def test_random_draws_stay_in_range_and_more_draws_keep_the_first(tmp_path):
    params = {
        "train.lr": {"distribution": "log_uniform", "min": 1e-4, "max": 1e-2},
        "train.weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "train.warmup_steps": {"distribution": "int", "min": 0, "max": 2},
        "model.n_heads": [1, 2, 4],
    }
    small = members_of(write_spec(tmp_path, method="random", count=40, parameters=params))
    big = members_of(write_spec(tmp_path, method="random", count=60, parameters=params))
    assert [m.params for m in big[:40]] == [m.params for m in small]
    assert small[3].name == "sw-003-seed0"
    lrs = [m.params["train.lr"] for m in big]
    assert all(1e-4 <= v <= 1e-2 for v in lrs)
    logs = sorted(math.log10(v) for v in lrs)  # log-uniform: both decades are populated
    assert logs[5] < -3.3 and logs[-5] > -2.7
    assert {m.params["train.warmup_steps"] for m in big} == {0, 1, 2}
    assert {m.params["model.n_heads"] for m in big} == {1, 2, 4}
    assert all(0 <= m.params["train.weight_decay"] <= 0.5 for m in big)


def test_set_fixes_fields_of_every_member_before_the_varied_ones(tmp_path):
    path = write_spec(
        tmp_path,
        set=["train.epochs=3", "task.n_train=500", "train.l1={hooks: [blocks.0.hook_resid_pre], coef: 0.01}"],
        parameters={"train.lr": [0.001, 0.01]},
    )
    members = members_of(path)
    assert [m.params for m in members] == [{"train.lr": 0.001}, {"train.lr": 0.01}]  # set values are not "varied"
    assert all(m.config.train.epochs == 3 and m.config.task.n_train == 500 for m in members)
    assert all(m.config.train.l1.coef == 0.01 and m.config.task.list_len == 4 for m in members)  # the rest: base
    assert [m.config.train.lr for m in members] == [0.001, 0.01]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"set": ["train.epoch=3"]}, "set: 'train.epoch' is not a config field (did you mean 'train.epochs'?)"),
        ({"set": ["train.epochs"]}, "set: 'train.epochs': expected KEY=VALUE"),
        ({"set": ["seed=3"]}, "set: seed is set by the sweep"),
        (
            {"set": ["train.lr=0.1"], "parameters": {"train.lr": [0.01]}},
            "parameters.train.lr: also in set; a field is either fixed or varied",
        ),
        ({"set": ["train.epochs=0"]}, "(member sw-seed0): train.epochs: Input should be greater than or equal to 1"),
        (
            {"parameters": {"train.weight_dacay": [0.1]}},
            "parameters: 'train.weight_dacay' is not a config field (did you mean 'train.weight_decay'?)",
        ),
        (
            {"parameters": {"train.lr": {"distribution": "uniform", "min": 0, "max": 1}}},
            "parameters.train.lr: distributions need method: random",
        ),
        ({"method": "random", "parameters": {"train.lr": [0.1]}}, "count: required when method is random"),
        (
            {
                "method": "random",
                "count": 2,
                "parameters": {"train.lr": {"distribution": "log_uniform", "min": 0, "max": 1}},
            },
            "parameters.train.lr.min: Input should be greater than 0",
        ),
        (
            {"method": "random", "count": 2, "parameters": {"train.lr": {"distribution": "normal"}}},
            "parameters.train.lr.distribution: expected one of uniform, log_uniform, int, choice (got 'normal')",
        ),
        ({"parameters": {"seed": [1, 2]}}, "parameters.seed: set by the sweep"),
        ({"parameters": {"train.lr": [0.1, -1.0]}}, "(member sw-lr-1-seed0): train.lr: Input should be greater than 0"),
        ({"parameters": {"train.lr": []}}, "parameters.train.lr: the list of values is empty"),
        ({"seeds": [1, 1]}, "seeds: must be distinct"),
        ({"base": "missing.yaml"}, "base: config file"),
        ({"paramters": {}}, "paramters: unknown key (did you mean 'parameters'?)"),
    ],
)
def test_bad_specs_fail_with_one_line_naming_the_field(tmp_path, fields, message):
    path = write_spec(tmp_path, **fields)
    with pytest.raises(ToylensError) as err:
        members_of(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_cli_dry_run_and_bad_spec(tmp_path):
    path = write_spec(tmp_path, parameters={"train.weight_decay": [0.0, 0.3]})
    proc = subprocess.run(
        [sys.executable, "-m", "toylens.cli", "sweep", str(path), "--dry-run"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "sw-weight_decay0.3-seed0" in proc.stdout
    bad = write_spec(tmp_path, parameters={"train.lr": [0.0]})
    proc = subprocess.run([sys.executable, "-m", "toylens.cli", "sweep", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "train.lr" in proc.stderr
    assert not (tmp_path / "runs").exists()


class Interrupt(TrainCallback):
    def on_epoch_end(self, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_failing_member_does_not_stop_the_others_and_rerun_trains_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # inherited by the worker processes
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    # "val/bogus" passes validation but stops training after epoch 1: a runtime failure.
    path = write_spec(tmp_path, parameters={"train.select_metric": ["test/loss", "test/acc", "val/bogus"]})
    interrupted, fresh, failing = members_of(path)
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):  # an earlier attempt at one member stopped after epoch 1
        train(interrupted.config, out / "sw", progress=False, callbacks=[Interrupt()])

    result = run_sweep(path, out, jobs=2, wandb=True, device="cpu", progress=False)
    rows = {r["name"]: r for r in result.rows}
    assert [rows[m.name]["status"] for m in (interrupted, fresh, failing)] == ["done", "done", "failed"]
    assert rows[interrupted.name]["action"] == "resumed" and rows[fresh.name]["action"] == "trained"
    assert "resuming after epoch 1" in open(rows[interrupted.name]["log"]).read()
    assert [r["epoch"] for r in RunDir(out / "sw" / interrupted.name).read_jsonl("metrics.jsonl")] == [0, 1, 2]
    err = rows[failing.name]["error"]
    assert err.startswith("train.select_metric: 'val/bogus' is not a metric") and "\n" not in err
    assert "Traceback" in open(rows[failing.name]["log"]).read()

    with open(result.sweep_dir / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["done", "done", "failed"]
    assert table[1]["train.select_metric"] == "test/acc" and float(table[1]["test/loss"]) > 0
    assert json.loads((result.sweep_dir / "sweep.json").read_text())["counts"]["failed"] == 1

    wb = wandb_run(result.sweep_dir)  # every member logged to W&B, grouped by sweep
    assert {run["group"] for runs in wb.values() for run in runs} == {"sw"}
    fresh_rows = RunDir(out / "sw" / fresh.name).read_jsonl("metrics.jsonl")
    assert [h["test/loss"] for h in wb[fresh.name][0]["history"]] == pytest.approx([r["test/loss"] for r in fresh_rows])

    done_files = {m.name: (out / "sw" / m.name / "summary.json").read_bytes() for m in (interrupted, fresh)}
    again = run_sweep(path, out, jobs=2, device="cpu", progress=False)
    rows = {r["name"]: r for r in again.rows}
    assert [rows[m.name]["action"] for m in (interrupted, fresh, failing)] == [
        "skipped (finished)",
        "skipped (finished)",
        "resumed",
    ]
    assert rows[failing.name]["status"] == "failed"
    assert all((out / "sw" / name / "summary.json").read_bytes() == data for name, data in done_files.items())
    assert len(wandb_run(result.sweep_dir)[fresh.name]) == 1  # nothing retrained

    import toylens  # the report on a sweep: its finished members, and a row per member

    page = toylens.report([result.sweep_dir], tmp_path / "sweep.html", png=False)
    assert page.sections[:2] == ["summary", "sweep"]
    html = page.path.read_text()
    assert html.count(interrupted.name) >= 2 and "val/bogus" in html and "is not a metric" in html


def test_a_summary_without_the_goal_of_its_best_gets_it_from_the_task(tmp_path):
    from toylens.sweep.runner import _goal

    (sort_member,) = members_of(write_spec(tmp_path))  # summaries written before "goal" was recorded
    assert [_goal(sort_member, m) for m in ("test/acc", "test/list_acc", "test/loss", "train/l1")] == [
        "max",
        "max",
        "min",
        "min",
    ]
    assert _goal(sort_member, "test/bogus") is None and _goal(sort_member, None) is None


def test_shipped_sweep_specs_expand():
    from pathlib import Path

    specs = sorted((Path(__file__).parents[2] / "configs" / "sweeps").glob("*.yaml"))
    assert specs
    for path in specs:
        members = members_of(path)
        assert members and len({m.name for m in members}) == len(members)
    wd = members_of(Path(__file__).parents[2] / "configs" / "sweeps" / "sort-weight-decay.yaml")
    assert len(wd) == 15 and {m.config.train.weight_decay for m in wd} == {0.0, 0.03, 0.1, 0.3, 1.0}
    from toylens.train.ensemble import ensemble_key

    assert len({ensemble_key(m.config) for m in wd}) == 1  # one ensemble on a GPU

    quick = members_of(Path(__file__).parents[2] / "configs" / "sweeps" / "imdb-1l-attn.quick.yaml")
    assert len(quick) == 6 and {m.config.task.name for m in quick} == {"lm"}
    for m in quick:  # what the quick sweep fixes itself, whatever its base config says
        assert m.config.task.vocab is not None and m.config.task.vocab.max_size == 2048
        assert (m.config.task.max_examples, m.config.train.epochs) == (1000, 2)
        assert m.config.train.select_metric == "val/loss" and m.config.model.attn_only


@pytest.mark.slow
def test_sweep_as_ensemble_isolates_a_diverging_member(tmp_path):
    # lr 1e300: the first AdamW step overflows that member's weights, so its loss becomes NaN.
    path = write_spec(tmp_path, parameters={"train.lr": [0.003, 1e300]}, seeds=[0, 1])
    result = run_sweep(path, tmp_path / "runs", ensemble=True, device="cpu", progress=False)
    rows = {r["name"]: r for r in result.rows}
    assert {r["action"] for r in result.rows} == {"trained in an ensemble"}
    assert len({r["log"] for r in result.rows}) == 1  # one job trained all four
    assert [rows[f"sw-lr0.003-seed{s}"]["status"] for s in (0, 1)] == ["done", "done"]
    for s in (0, 1):
        assert rows[f"sw-lr1e300-seed{s}"]["status"] == "failed"
        assert "loss became nan" in rows[f"sw-lr1e300-seed{s}"]["error"]
    # the healthy members match plain runs of their configs
    solo = train(members_of(path)[1].config, tmp_path / "solo", progress=False, device="cpu")
    assert rows["sw-lr0.003-seed1"]["test/loss"] == pytest.approx(solo.metrics["test/loss"], abs=1e-4)
