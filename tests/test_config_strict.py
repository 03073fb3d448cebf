"""Strict inputs: a config, sweep spec, study or LLC setting is taken as written, never coerced.

A bool is not a number, a quoted number is text, 1.5 is not an integer and a number is not text;
an int still fills a float and a YAML list a pair. Empty files, a top level or a section that is
not a mapping, and missing names stop with one line naming the file and the field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import toylens
from conftest import TINY
from toylens.cli import _llc_overrides, app
from toylens.config import config_to_yaml, load_config
from toylens.errors import ToylensError
from toylens.reproduce import load_study
from toylens.run import RunDir
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


# ------------------------------------------------------------------------------- types


@pytest.mark.parametrize("text, message", [
    ("model: {d_model: true}", "model.d_model: Input should be a valid integer (got True)"),
    ("train: {warmup_steps: true}", "train.warmup_steps: Input should be a valid integer (got True)"),
    ("train: {lr: '0.1'}", "train.lr: Input should be a valid number (got '0.1')"),
    ("model: {d_model: '64'}", "model.d_model: Input should be a valid integer (got '64')"),
    ("model: {attn_only: 1}", "model.attn_only: Input should be a valid boolean (got 1)"),
    ("name: 123", "name: Input should be a valid string (got 123)"),
    ("train: {select_metric: 0.5}", "train.select_metric: Input should be a valid string (got 0.5)"),
    ("model: {d_model: 1.5}", "model.d_model: Input should be a valid integer (got 1.5)"),
    ("model: {d_head: null, d_model: null}", "model.d_model: Input should be a valid integer (got null)"),
    ("train: {lr: {value: 0.1}}", "train.lr: Input should be a valid number (got a mapping)"),
    ("train: {betas: [true, 0.99]}", "train.betas.0: Input should be a valid number (got True)"),
    ("train: {betas: 0.9}", "train.betas: Input should be a list (got 0.9)"),
    ("train: {l1: {hooks: blocks.0.mlp.hook_post}}", "train.l1.hooks: Input should be a list (got 'blocks.0.mlp.hook_post')"),
    ("seed: 2024-01-01", "seed: 2024-01-01 is a date, not text, a number, a boolean, null, a list or a mapping"),
    ("name: 2024-01-01", "name: 2024-01-01 is a date, not text, a number, a boolean, null, a list or a mapping"),
    ("task: {name: sort, list_len: 4, n_values: 10, n_train: 600, n_test: !!binary aGk=}",
     "task.n_test: b'hi' is binary data, not text, a number, a boolean, null, a list or a mapping"),
])
def test_values_are_not_coerced(tmp_path, text, message):
    body = text if text.startswith("task:") else TASK + text
    assert error_of(tmp_path, body + "\n") == message


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
    (TASK + "model: 3\n", "model: Input should be a mapping (got 3)"),
    ("task: sort\n", "task: Input should be a mapping (got 'sort')"),
    (TASK + "train: {l1: [blocks.0.mlp.hook_post]}\n", "train.l1: Input should be a mapping (got a list)"),
    (TASK + "model: null\n", "model: Input should be a mapping (got null)"),
    (TASK + "1: x\n", "1: a key must be text (got 1)"),
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


# ------------------------------------------------------------------------------- --set


def test_set_values_are_yaml_but_text_fields_keep_their_text(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(TASK)
    cfg = load_config(path, ["train.lr=0.1", "seed=1", "name=123", "train.select_metric=1e3", "train.betas=[0.9, 0.98]",
                             "train.grad_clip=null", "model.attn_only=true", "train.weight_decay=1e-2"])
    assert (cfg.train.lr, cfg.seed, cfg.name, cfg.train.select_metric) == (0.1, 1, "123", "1e3")
    assert cfg.train.betas == (0.9, 0.98) and cfg.train.grad_clip is None and cfg.model.attn_only is True
    assert cfg.train.weight_decay == 0.01
    assert load_config(path, ["train.select_metric=null"]).train.select_metric is None
    assert error_of(tmp_path, TASK, ("model.d_model=true",)) == "model.d_model: Input should be a valid integer (got True)"
    assert error_of(tmp_path, TASK, ('train.lr="0.1"',)) == "train.lr: Input should be a valid number (got '0.1')"
    assert error_of(tmp_path, TASK, ("model.act_fn=1",)) == "model.act_fn: Input should be 'relu' or 'gelu' (got '1')"


def test_llc_set_reads_values_like_config_set():
    assert _llc_overrides(["epsilon=1e-4", "chains=8", "precondition=none", "nbeta=null"]) == {
        "epsilon": 1e-4, "chains": 8, "precondition": "none", "nbeta": None}
    from toylens.analysis.llc_run import validate_settings

    with pytest.raises(ToylensError, match=r"^llc\.json: chains: Input should be a valid integer \(got True\)$"):
        validate_settings(_llc_overrides(["chains=true"]), "llc.json")


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
    ({"name": 5, "base": "base.yaml"}, "name: Input should be a valid string (got 5)"),
    ({"name": "sw", "base": "base.yaml", "seeds": [True]}, "seeds.0: Input should be a valid integer (got True)"),
    ({"name": "sw", "base": "base.yaml", "method": "random", "count": "3", "parameters": {"train.lr": [0.1]}},
     "count: Input should be a valid integer (got '3')"),
    ({"name": "sw", "base": "base.yaml", "method": "random", "count": 2,
      "parameters": {"train.lr": {"distribution": "uniform", "min": "0.1", "max": 1}}},
     "parameters.train.lr.min: Input should be a valid number (got '0.1')"),
    ({"name": "sw", "base": "base.yaml", "parameters": {"train.lr": ["0.1"]}},
     "(member sw-lr0.1-seed0): train.lr: Input should be a valid number (got '0.1')"),
])
def test_sweep_specs_are_strict(tmp_path, spec, message):
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
    ({"name": "s", "runs": ["a.yaml"], "quick": {"set": "train.epochs=1"}},
     "quick.set: Input should be a list (got 'train.epochs=1')"),
    ({"name": "s", "runs": ["a.yaml"], "quick": {"llc": {"chains": 2}}, "steps": [1]},
     "steps.0: Input should be 'train', 'analyze', 'llc' or 'report' (got 1)"),
])
def test_studies_are_strict(tmp_path, study, message):
    path = tmp_path / "study.yaml"
    path.write_text(study) if isinstance(study, str) else write_yaml(path, study)
    with pytest.raises(ToylensError) as e:
        load_study(path)
    assert str(e.value) == f"{path}: {message}"


def test_study_set_overrides_follow_the_set_rule(tmp_path):
    write_yaml(tmp_path / "a.yaml", TINY)
    path = write_yaml(tmp_path / "study.yaml", {"name": "s", "runs": [{"config": "a.yaml", "set": ["name=42"]}],
                                                 "quick": {"set": ["train.lr=1e-3"]}})
    from toylens.reproduce import run_configs

    study, path = load_study(path)
    (cfg,) = run_configs(study, path, "quick")
    assert (cfg.name, cfg.train.lr) == ("42", 0.001)


def test_llc_settings_are_strict():
    from toylens.analysis.llc_run import validate_settings

    with pytest.raises(ToylensError, match=r"^llc\.json: chains: Input should be a valid integer \(got True\)$"):
        validate_settings({"chains": True}, "llc.json")
    with pytest.raises(ToylensError, match=r"^llc\.json: gamma: Input should be a valid number \(got '3'\)$"):
        validate_settings({"gamma": "3"}, "llc.json")


# ------------------------------------------------------------------------------- round trips


def test_saved_config_and_checkpoint_metadata_load_again(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["train"].update(epochs=1, lr=0.003, betas=[0.9, 0.99], l1={"hooks": ["blocks.0.mlp.hook_post"], "coef": 1e-4})
    raw["name"] = "1e-4"  # text that YAML 1.2 reads as a number: the saved config.yaml must quote it
    result = toylens.train(load_config(raw), out=tmp_path / "runs", progress=False, device="cpu")
    cfg = RunDir(result.run_dir).config()
    assert cfg.name == "1e-4" and cfg.train.betas == (0.9, 0.99) and cfg.model.init_range == pytest.approx(0.2)
    for source in (result.run_dir, result.run_dir / "final.safetensors"):
        assert toylens.load(source).config == cfg
    # Resuming compares the config with the saved one, read back strictly.
    again = toylens.train(load_config(raw), out=tmp_path / "runs", progress=False, device="cpu", resume=True)
    assert again.run_dir == result.run_dir


def test_shipped_configs_sweeps_and_studies_pass_strict_validation():
    root = Path(__file__).resolve().parents[1] / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert len(configs) >= 20
    for path in configs:
        load_config(path)
    for path in sorted((root / "sweeps").glob("*.yaml")):
        spec, folder = load_sweep(path)
        assert expand(spec, folder, str(path))
    for path in sorted((root / "studies").glob("*.yaml")):
        from toylens.reproduce import run_configs

        study, _ = load_study(path)
        for size in ("quick", "full"):
            assert run_configs(study, path, size)

