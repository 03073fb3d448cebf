"""Config, sweep and study files: what an empty file, a top level that is not a mapping or a number
written as 1e-4 gives. Every error is one line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import TINY
from toylens.cli import app
from toylens.config import config_to_yaml, load_config
from toylens.errors import ToylensError
from toylens.reproduce import load_study
from toylens.sweep import expand, load_sweep

TASK = "task: {name: sort, list_len: 4, n_values: 10, n_train: 600, n_test: 100}\n"


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    """The one-line error of loading a config file with this text."""
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ToylensError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg.removeprefix(f"{path}: ")


# ------------------------------------------------------------------------------- numbers


def test_ints_fill_floats_lists_fill_pairs_and_1e_minus_4_is_a_number(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(TASK + "train: {lr: 1, betas: [0.9, 0.99], l1: {coef: 1e-4}, grad_clip: 2}\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.9, 0.99) and cfg.train.l1.coef == 1e-4 and cfg.train.grad_clip == 2.0
    cfg = load_config({**TINY, "task": {"name": "induction", "seq_len": 16, "segment_len": [2, 4]}})
    assert cfg.task.segment_len == (2, 4)


def test_text_that_looks_like_a_number_survives_saving(tmp_path):
    cfg = load_config({**TINY, "name": "1e-4", "train": {**TINY["train"], "select_metric": "1e3"}})
    path = tmp_path / "saved.yaml"
    path.write_text(config_to_yaml(cfg))
    again = load_config(path)
    assert (again.name, again.train.select_metric) == ("1e-4", "1e3")


# ------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("text, message", [
    ("", "config is empty"),
    ("# nothing but a comment\n", "config is empty"),
    ("{}\n", "config is empty"),
    ("- task\n- model\n", "the top level must be a mapping of sections (task, model, train), not a list"),
    ("3\n", "the top level must be a mapping of sections (task, model, train), not 3"),
])
def test_files_and_sections_that_are_not_mappings(tmp_path, text, message):
    assert error_of(tmp_path, text) == message


def test_unknown_key_still_suggests_the_closest(tmp_path):
    msg = error_of(tmp_path, TASK + "train: {wieght_decay: 0.1}\n")
    assert msg == "train.wieght_decay: unknown key (did you mean 'weight_decay'?)"
    assert error_of(tmp_path, "task: {name: sorting}\n").startswith("task.name: unknown name 'sorting' (did you mean 'sort'?)")


def test_empty_file_through_the_cli_exits_2_without_a_run(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "runs"), "--no-progress"])
    assert result.exit_code == 2 and result.stderr == f"error: {path}: config is empty\n"
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------- sweeps and studies


def write_yaml(path: Path, raw: Any) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def sweep_error(tmp_path: Path, spec: Any) -> str:
    base = {k: v for k, v in TINY.items() if k != "name"}
    write_yaml(tmp_path / "base.yaml", base)
    path = tmp_path / "spec.yaml"
    path.write_text(spec) if isinstance(spec, str) else write_yaml(path, spec)
    with pytest.raises(ToylensError) as e:
        loaded, root = load_sweep(path)
        expand(loaded, root, str(path))
    assert "\n" not in str(e.value)
    return str(e.value).removeprefix(f"{path}: ")


@pytest.mark.parametrize("spec, message", [
    ("", "sweep spec is empty"),
    ("[a, b]\n", "the top level must be a mapping (name, base, parameters, ...), not a list"),
    ({"base": "base.yaml"}, "name: required field is missing"),
])
def test_sweep_spec_files(tmp_path, spec, message):
    assert sweep_error(tmp_path, spec).endswith(message)


def test_sweep_base_file_must_not_be_empty(tmp_path):
    write_yaml(tmp_path / "spec.yaml", {"name": "sw", "base": "empty.yaml"})
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ToylensError, match="empty.yaml: config is empty$"):
        loaded, root = load_sweep(tmp_path / "spec.yaml")
        expand(loaded, root)


@pytest.mark.parametrize("study, message", [
    ("", "study is empty"),
    ("just text\n", "the top level must be a mapping (name, runs, steps, quick, full), not text 'just text'"),
    ({"runs": ["a.yaml"]}, "name: required field is missing"),
])
def test_study_files(tmp_path, study, message):
    path = tmp_path / "study.yaml"
    path.write_text(study) if isinstance(study, str) else write_yaml(path, study)
    with pytest.raises(ToylensError) as e:
        load_study(path)
    assert str(e.value) == f"{path}: {message}"
