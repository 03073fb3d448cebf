"""Config validation: bad input stops before any work with one line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY

from toylens.config import SHIPPED, config_diff, field_docs, load_config, shipped
from toylens.errors import ToylensError


def write(tmp_path: Path, raw: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(source, overrides=()) -> str:
    with pytest.raises(ToylensError) as e:
        load_config(source, overrides)
    return str(e.value)


def test_misspelled_key_names_field_and_suggests(tmp_path):
    raw = {**TINY, "train": {**TINY["train"], "wieght_decay": 0.1}}
    msg = error_of(write(tmp_path, raw))
    assert "train.wieght_decay" in msg and "unknown key" in msg and "'weight_decay'" in msg
    assert "\n" not in msg


def test_misspelled_key_inside_task_union(tmp_path):
    raw = {**TINY, "task": {**TINY["task"], "list_lenn": 5}}
    msg = error_of(write(tmp_path, raw))
    assert "task.list_lenn" in msg and "'list_len'" in msg


def test_negative_weight_decay_names_field(tmp_path):
    msg = error_of(write(tmp_path, TINY), ["train.weight_decay=-0.1"])
    assert "train.weight_decay" in msg and "greater than or equal to 0" in msg and "-0.1" in msg


def test_string_where_number_belongs(tmp_path):
    raw = {**TINY, "train": {**TINY["train"], "lr": "fast"}}
    msg = error_of(write(tmp_path, raw))
    assert msg.startswith(f"{tmp_path / 'cfg.yaml'}: train.lr:") and "number" in msg


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(
        write(tmp_path, TINY),
        ["train.weight_decay=0.5", "model.attn_only=true", "train.l1.hooks=[blocks.0.hook_resid_post]"],
    )
    assert cfg.train.weight_decay == 0.5 and cfg.model.attn_only is True
    assert cfg.train.l1.hooks == ["blocks.0.hook_resid_post"]


def test_bad_override_syntax(tmp_path):
    assert error_of(write(tmp_path, TINY), ["train.lr"]) == "--set 'train.lr': expected KEY=VALUE"
    assert error_of(write(tmp_path, TINY), ["seed.x=1"]) == "--set seed.x: unknown key (did you mean 'seed'?)"
    assert error_of(write(tmp_path, TINY), ["train.wieght_decay=0.1"]) == (
        "--set train.wieght_decay: unknown key (did you mean 'train.weight_decay'?)"
    )
    assert "is a value, not a section" in error_of(write(tmp_path, TINY), ["train=1", "train.lr=0.1"])


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1,\n")
    assert "invalid YAML" in error_of(bad)
    assert "config file not found" in error_of(tmp_path / "nope.yaml")


def test_unknown_task_and_bad_literal(tmp_path):
    assert "'sort'" in error_of({**TINY, "task": {"name": "sorting"}})
    msg = error_of({**TINY, "model": {"normalization": "RMS"}})
    assert "model.normalization" in msg and "'LN'" in msg


def test_l1_hook_must_exist():
    raw = {
        **TINY,
        "model": {**TINY["model"], "attn_only": True},
        "train": {**TINY["train"], "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.1}},
    }
    assert "no hook named 'blocks.0.mlp.hook_post'" in error_of(raw)


def test_sort_needs_enough_distinct_lists():
    assert "distinct lists" in error_of({**TINY, "task": {"name": "sort", "list_len": 3, "n_values": 4}})


def test_name_defaults_to_file_stem(tmp_path):
    raw = {k: v for k, v in TINY.items() if k != "name"}
    assert load_config(write(tmp_path, raw, "my-run.yaml")).name == "my-run"


def test_resolved_fills_derived_values_and_checks_n_ctx():
    cfg = load_config(TINY).resolved(d_vocab=11, d_vocab_out=10, n_ctx=8)
    m = cfg.model
    assert (m.d_vocab, m.d_vocab_out, m.n_ctx, m.d_head) == (11, 10, 8, 8)
    assert m.init_range == pytest.approx(0.8 / 4)
    with pytest.raises(ToylensError, match="model.n_ctx: 4 is shorter"):
        load_config({**TINY, "model": {**TINY["model"], "n_ctx": 4}}).resolved(11, 10, 8)


def test_config_diff_and_field_docs():
    a = load_config(TINY)
    b = load_config(TINY, ["train.lr=0.1", "model.d_model=32"])
    assert config_diff(a, b) == ["model.d_model", "train.lr"]
    docs = {name: doc for name, _, doc in field_docs()}
    assert "train.l1.coef" in docs and all(docs.values()), "every field needs a docstring"


@pytest.mark.parametrize(
    "override,field",
    [
        ("train.wieght_decay=0.1", "train.wieght_decay"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("train.epochs=many", "train.epochs"),
    ],
)
def test_cli_exits_2_with_one_line(tmp_path, override, field):
    cfg = write(tmp_path, TINY)
    proc = subprocess.run(
        [sys.executable, "-m", "toylens.cli", "train", str(cfg), "--set", override, "--out", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing may be written before the config is valid"


def test_configs_paths_fall_back_to_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a checkout: no configs/ here
    assert shipped(Path("configs/sort-no-decay.yaml")) == SHIPPED / "sort-no-decay.yaml"
    assert shipped(Path("configs/studies/induction-heads.yaml")) == SHIPPED / "studies" / "induction-heads.yaml"
    assert load_config("configs/sort-no-decay.yaml").name == "sort-no-decay"
    for given in ("configs/no-such.yaml", "sort-no-decay.yaml", "other/sort-no-decay.yaml", "/configs/x.yaml"):
        assert shipped(Path(given)) == Path(given)  # left to its reader's "not found"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sort-no-decay.yaml").write_text(yaml.safe_dump({**TINY, "name": "mine"}))
    assert load_config("configs/sort-no-decay.yaml").name == "mine"  # a file that exists is always the one read
