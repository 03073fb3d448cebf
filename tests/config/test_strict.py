"""Strict inputs: a config, sweep spec, study or LLC setting is taken as written, never coerced.

A bool is not a number, a quoted number is text, 1.5 is not an integer and a number is not text;
an int still fills a float and a YAML list a pair. Empty files, a top level or a section that is
not a mapping, and missing names stop with one line naming the file and the field. The property
test at the end breaks a valid config in one place at a time and runs it through the CLI.
"""

from __future__ import annotations

import copy
import importlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import toylens
from toylens.cli import app
from toylens.config import config_to_yaml, load_config
from toylens.errors import ToylensError
from toylens.reproduce import load_study
from toylens.rundir import RunDir
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


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: {d_model: true}", "model.d_model: Input should be a valid integer (got True)"),
        ("train: {warmup_steps: true}", "train.warmup_steps: Input should be a valid integer (got True)"),
        ("train: {lr: '0.1'}", "train.lr: Input should be a valid number (got '0.1')"),
        ("model: {d_model: '64'}", "model.d_model: Input should be a valid integer (got '64')"),
        ("model: {attn_only: 1}", "model.attn_only: Input should be a valid boolean (got 1)"),
        ("train: {compile: 1}", "train.compile: Input should be a valid boolean (got 1)"),
        ("train: {compile: 'yes'}", "train.compile: Input should be a valid boolean (got 'yes')"),
        ("name: 123", "name: Input should be a valid string (got 123)"),
        ("train: {select_metric: 0.5}", "train.select_metric: Input should be a valid string (got 0.5)"),
        ("model: {d_model: 1.5}", "model.d_model: Input should be a valid integer (got 1.5)"),
        ("train: {lr: .inf}", "train.lr: Input should be a finite number (got inf)"),
        ("train: {l1: {coef: .nan}}", "train.l1.coef: Input should be a finite number (got nan)"),
        ("model: {d_head: null, d_model: null}", "model.d_model: Input should be a valid integer (got null)"),
        ("train: {lr: {value: 0.1}}", "train.lr: Input should be a valid number (got a mapping)"),
        ("train: {betas: [true, 0.99]}", "train.betas.0: Input should be a valid number (got True)"),
        ("train: {betas: 0.9}", "train.betas: Input should be a list (got 0.9)"),
        (
            "train: {l1: {hooks: blocks.0.mlp.hook_post}}",
            "train.l1.hooks: Input should be a list (got 'blocks.0.mlp.hook_post')",
        ),
        ("seed: 2024-01-01", "seed: 2024-01-01 is a date, not text, a number, a boolean, null, a list or a mapping"),
        ("name: 2024-01-01", "name: 2024-01-01 is a date, not text, a number, a boolean, null, a list or a mapping"),
        ("train: &a {l1: *a}", "train.l1: contains itself (a YAML alias inside its own anchor)"),
        ("train: {l1: {hooks: &h [a, *h]}}", "train.l1.hooks.1: contains itself (a YAML alias inside its own anchor)"),
        (
            "train: {l1: &c {coef: 0.1}, select_metric: null}\nmodel: {n_layers: 1}\nx: *c",
            "x: unknown key",
        ),  # an alias used twice is not a cycle
        (
            "task: {name: sort, list_len: 4, n_values: 10, n_train: 600, n_test: !!binary aGk=}",
            "task.n_test: b'hi' is binary data, not text, a number, a boolean, null, a list or a mapping",
        ),
    ],
)
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


@pytest.mark.parametrize(
    "text, message",
    [
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
    ],
)
def test_files_and_sections_that_are_not_mappings(tmp_path, text, message):
    assert error_of(tmp_path, text) == message


def test_unknown_key_still_suggests_the_closest(tmp_path):
    msg = error_of(tmp_path, TASK + "train: {wieght_decay: 0.1}\n")
    assert msg == "train.wieght_decay: unknown key (did you mean 'weight_decay'?)"
    assert error_of(tmp_path, "task: {name: sorting}\n").startswith(
        "task.name: unknown name 'sorting' (did you mean 'sort'?)"
    )


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
    cfg = load_config(
        path,
        [
            "train.lr=0.1",
            "seed=1",
            "name=123",
            "train.select_metric=1e3",
            "train.betas=[0.9, 0.98]",
            "train.grad_clip=null",
            "model.attn_only=true",
            "train.weight_decay=1e-2",
        ],
    )
    assert (cfg.train.lr, cfg.seed, cfg.name, cfg.train.select_metric) == (0.1, 1, "123", "1e3")
    assert cfg.train.betas == (0.9, 0.98) and cfg.train.grad_clip is None and cfg.model.attn_only is True
    assert cfg.train.weight_decay == 0.01
    assert load_config(path, ["train.select_metric=null"]).train.select_metric is None
    assert (
        error_of(tmp_path, TASK, ("model.d_model=true",)) == "model.d_model: Input should be a valid integer (got True)"
    )
    assert error_of(tmp_path, TASK, ('train.lr="0.1"',)) == "train.lr: Input should be a valid number (got '0.1')"
    assert error_of(tmp_path, TASK, ("model.act_fn=1",)) == "model.act_fn: Input should be 'relu' or 'gelu' (got '1')"


def test_llc_set_reads_values_like_config_set():
    from toylens.config import apply_sets
    from toylens.llc import LLCSettings
    from toylens.llc.store import validate_settings

    def llc_sets(*items: str) -> dict:
        return apply_sets({}, items, LLCSettings, section="llc")

    assert llc_sets("epsilon=1e-4", "chains=8", "precondition=none", "nbeta=null") == {
        "epsilon": 1e-4,
        "chains": 8,
        "precondition": "none",
        "nbeta": None,
    }
    assert llc_sets("llc.chains=8", "llc.epsilon=1e-4") == llc_sets("chains=8", "epsilon=1e-4")  # bare or llc.
    with pytest.raises(ToylensError, match=r"^llc\.json: chains: Input should be a valid integer \(got True\)$"):
        validate_settings(llc_sets("chains=true"), "llc.json")
    with pytest.raises(ToylensError, match=r"^--set llc\.chans: unknown key \(did you mean 'chains'\?\)$"):
        llc_sets("llc.chans=8")
    with pytest.raises(ToylensError, match=r"^--set train\.lr: unknown key$"):  # a run config key is not an LLC one
        llc_sets("train.lr=0.1")


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


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "sweep spec is empty"),
        ("[a, b]\n", "the top level must be a mapping (name, base, parameters, ...), not a list"),
        ({"base": "base.yaml"}, "name: required field is missing"),
        ({"name": 5, "base": "base.yaml"}, "name: Input should be a valid string (got 5)"),
        ({"name": "sw", "base": "base.yaml", "seeds": [True]}, "seeds.0: Input should be a valid integer (got True)"),
        (
            {"name": "sw", "base": "base.yaml", "method": "random", "count": "3", "parameters": {"train.lr": [0.1]}},
            "count: Input should be a valid integer (got '3')",
        ),
        (
            {
                "name": "sw",
                "base": "base.yaml",
                "method": "random",
                "count": 2,
                "parameters": {"train.lr": {"distribution": "uniform", "min": "0.1", "max": 1}},
            },
            "parameters.train.lr.min: Input should be a valid number (got '0.1')",
        ),
        (
            {"name": "sw", "base": "base.yaml", "parameters": {"train.lr": ["0.1"]}},
            "(member sw-lr0.1-seed0): train.lr: Input should be a valid number (got '0.1')",
        ),
    ],
)
def test_sweep_specs_are_strict(tmp_path, spec, message):
    assert sweep_error(tmp_path, spec).endswith(message)


def test_sweep_base_file_must_not_be_empty(tmp_path):
    write_yaml(tmp_path / "spec.yaml", {"name": "sw", "base": "empty.yaml"})
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ToylensError, match="empty.yaml: config is empty$"):
        loaded, root = load_sweep(tmp_path / "spec.yaml")
        expand(loaded, root)


def test_sweep_base_with_a_date_names_the_member_and_field(tmp_path):
    (tmp_path / "base.yaml").write_text(TASK + "train: {epochs: 2024-01-01}\n")
    path = write_yaml(tmp_path / "spec.yaml", {"name": "sw", "base": "base.yaml", "seeds": [0]})
    loaded, root = load_sweep(path)
    with pytest.raises(ToylensError) as e:
        expand(loaded, root, str(path))
    assert str(e.value) == (
        f"{path} (member sw-seed0): train.epochs: 2024-01-01 is a date, not text, a number, a boolean, "
        "null, a list or a mapping"
    )


@pytest.mark.parametrize(
    "study, message",
    [
        ("", "study is empty"),
        ("just text\n", "the top level must be a mapping (name, runs, steps, quick, full), not text 'just text'"),
        ({"runs": ["a.yaml"]}, "name: required field is missing"),
        (
            {"name": "s", "runs": ["a.yaml"], "quick": {"set": "train.epochs=1"}},
            "quick.set: Input should be a list (got 'train.epochs=1')",
        ),
        (
            {"name": "s", "runs": ["a.yaml"], "quick": {"llc": {"chains": 2}}, "steps": [1]},
            "steps.0: Input should be 'train', 'analyze', 'llc', 'development' or 'report' (got 1)",
        ),
    ],
)
def test_studies_are_strict(tmp_path, study, message):
    path = tmp_path / "study.yaml"
    path.write_text(study) if isinstance(study, str) else write_yaml(path, study)
    with pytest.raises(ToylensError) as e:
        load_study(path)
    assert str(e.value) == f"{path}: {message}"


def test_study_set_overrides_follow_the_set_rule(tmp_path):
    write_yaml(tmp_path / "a.yaml", TINY)
    path = write_yaml(
        tmp_path / "study.yaml",
        {"name": "s", "runs": [{"config": "a.yaml", "set": ["name=42"]}], "quick": {"set": ["train.lr=1e-3"]}},
    )
    from toylens.reproduce import run_configs

    study, path = load_study(path)
    (cfg,) = run_configs(study, path, "quick")
    assert (cfg.name, cfg.train.lr) == ("42", 0.001)


def test_llc_settings_are_strict():
    from toylens.llc.store import validate_settings

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
    root = Path(__file__).resolve().parents[2] / "configs"
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


# ------------------------------------------------------------------------------- property test
# Two valid bases (the shipped sort config at test size, and an induction model), broken in one
# place per example. The generator keeps its own description of the schema (not read from
# toylens), so it knows what it broke and which dotted field the error must name.

BASES: dict[str, dict[str, Any]] = {
    "sort": {
        "name": "tiny-sort",
        "seed": 0,
        "task": {"name": "sort", "list_len": 4, "n_values": 10, "duplicates": False, "n_train": 600, "n_test": 100},
        "model": {
            "n_layers": 1,
            "n_heads": 2,
            "d_model": 16,
            "d_head": 8,
            "d_mlp": 32,
            "act_fn": "relu",
            "normalization": "none",
        },
        "train": {
            "epochs": 2,
            "batch_size": 64,
            "lr": 0.002,
            "weight_decay": 0.0,
            "betas": [0.9, 0.99],
            "schedule": "cosine",
            "warmup_steps": 2,
            "grad_clip": 1.0,
            "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.0001},
        },
    },
    "induction": {
        "name": "tiny-induction",
        "seed": 1,
        "task": {
            "name": "induction",
            "n_vocab": 8,
            "seq_len": 16,
            "segment_len": [2, 4],
            "loss_on": "copied",
            "n_train": 100,
            "n_test": 20,
        },
        "model": {"n_layers": 2, "n_heads": 2, "d_model": 16, "attn_only": True, "normalization": "LN"},
        "train": {
            "epochs": 1,
            "lr": 1,
            "schedule": "constant",
            "weight_decay_on": "all",
            "l1": {"hooks": ["blocks.1.hook_resid_post"], "coef": 0.0},
        },
    },
}


@dataclass(frozen=True)
class Leaf:
    """What a field takes: kind (int, float, bool, text, choice, hooks, pair_int, pair_float),
    whether null is allowed, the bounds of a number (`open_low`: the bound itself is out), the words
    of a choice."""

    kind: str
    optional: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()


COMMON = {
    "name": Leaf("text"),
    "seed": Leaf("int", low=0),
    "model.n_layers": Leaf("int", low=1, high=64),
    "model.n_heads": Leaf("int", low=1, high=128),
    "model.d_model": Leaf("int", low=1),
    "model.d_head": Leaf("int", True, low=1),
    "model.d_mlp": Leaf("int", True, low=1),
    "model.attn_only": Leaf("bool"),
    "model.act_fn": Leaf("choice", choices=("relu", "gelu")),
    "model.normalization": Leaf("choice", choices=("none", "LN")),
    "model.n_ctx": Leaf("int", True, low=1),
    "model.d_vocab": Leaf("int", True, low=1),
    "model.d_vocab_out": Leaf("int", True, low=1),
    "model.init_range": Leaf("float", True, low=0, open_low=True),
    "train.epochs": Leaf("int", low=1),
    "train.batch_size": Leaf("int", low=1),
    "train.lr": Leaf("float", low=0, open_low=True),
    "train.weight_decay": Leaf("float", low=0),
    "train.weight_decay_on": Leaf("choice", choices=("matrices", "embeddings", "all")),
    "train.betas": Leaf("pair_float"),
    "train.schedule": Leaf("choice", choices=("cosine", "constant")),
    "train.warmup_steps": Leaf("int", low=0),
    "train.min_lr_ratio": Leaf("float", low=0, high=1),
    "train.grad_clip": Leaf("float", True, low=0, open_low=True),
    "train.eval_batch_size": Leaf("int", low=1),
    "train.log_checkpoints": Leaf("int", low=0, high=10_000),
    "train.select_metric": Leaf("text", True),
    "train.precision": Leaf("choice", choices=("fp32", "bf16")),
    "train.compile": Leaf("bool"),
    "train.l1.hooks": Leaf("hooks"),
    "train.l1.coef": Leaf("float", low=0),
}
TASKS = {
    "sort": {
        "task.list_len": Leaf("int", low=1, high=512),
        "task.n_values": Leaf("int", low=2, high=100_000),
        "task.duplicates": Leaf("bool"),
        "task.n_train": Leaf("int", low=1),
        "task.n_test": Leaf("int", low=1),
        "task.data_seed": Leaf("int", low=0),
    },
    "induction": {
        "task.n_vocab": Leaf("int", low=2, high=100_000),
        "task.seq_len": Leaf("int", low=5, high=100_000),
        "task.segment_len": Leaf("pair_int"),
        "task.loss_on": Leaf("choice", choices=("all", "copied")),
        "task.n_train": Leaf("int", low=1),
        "task.n_test": Leaf("int", low=1),
        "task.data_seed": Leaf("int", low=0),
    },
}
SECTIONS = ("task", "model", "train", "train.l1")
TASK_NAMES = ("sort", "induction", "lm", "classify")

WORDS = st.from_regex(r"[a-z][a-z_]{0,9}", fullmatch=True)
BOOLS = st.booleans()
QUOTED_NUMBERS = st.one_of(st.integers(-1000, 1000).map(str), st.floats(-1e3, 1e3).map(lambda x: f"{x:.3f}"))
FRACTIONS = st.floats(-1e6, 1e6).filter(lambda x: x != int(x))  # never an integer
NUMBERS = st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6))
LISTS = st.lists(st.integers(0, 9), max_size=3)
MAPPINGS = st.dictionaries(WORDS, st.integers(0, 9), min_size=1, max_size=2)


def keys_of(base: str, level: str) -> set[str]:
    """The valid keys at a level ("" for the top) of a base's schema."""
    fields = {**COMMON, **TASKS[base]}
    keys = {f.removeprefix(f"{level}.") for f in fields if f.startswith(f"{level}.")} if level else set(fields)
    return {k.split(".")[0] for k in keys} | ({"name"} if level == "task" else set())


def put(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        raw = raw.setdefault(part, {})
    raw[leaf] = value


def wrong_scalar(leaf: Leaf) -> st.SearchStrategy:
    """A value of the wrong type for `leaf` (null too, unless the field allows it)."""
    null = [] if leaf.optional else [st.none()]
    by_kind = {
        "int": [BOOLS, QUOTED_NUMBERS, FRACTIONS, WORDS, LISTS, MAPPINGS],
        "float": [BOOLS, QUOTED_NUMBERS, WORDS, LISTS, MAPPINGS],
        "bool": [NUMBERS, st.sampled_from(["true", "false", "yes", "no", "1"]), LISTS, MAPPINGS],
        "text": [NUMBERS, BOOLS, LISTS, MAPPINGS],
        "choice": [WORDS.filter(lambda w: w not in leaf.choices), NUMBERS, BOOLS, LISTS, MAPPINGS],
        "hooks": [WORDS, NUMBERS, BOOLS, MAPPINGS],
        "pair_int": [NUMBERS, WORDS, BOOLS, MAPPINGS],
        "pair_float": [NUMBERS, WORDS, BOOLS, MAPPINGS],
    }
    return st.one_of(*by_kind[leaf.kind], *null)


@st.composite
def wrong_list(draw, leaf: Leaf) -> tuple[Any, str]:
    """A list field with a bad item or, for a pair, the wrong length; and the suffix of the field
    the error names (".i" for item i, "" for the list)."""
    if leaf.kind == "hooks":
        items = ["blocks.0.hook_resid_pre"] * draw(st.integers(1, 3))
        bad = [NUMBERS, BOOLS, st.none(), LISTS, MAPPINGS]
    else:
        items = [2, 4] if leaf.kind == "pair_int" else [0.9, 0.99]
        bad = [BOOLS, QUOTED_NUMBERS, WORDS, st.none(), LISTS, MAPPINGS] + (
            [FRACTIONS] if leaf.kind == "pair_int" else []
        )
        length = draw(st.integers(0, 4))
        if length != 2:
            items = (items * 2)[:length]
            return items, (f".{length}" if length < 2 else "")  # the first missing item, or too many
    i = draw(st.integers(0, len(items) - 1))
    items[i] = draw(st.one_of(*bad))
    return items, f".{i}"


def out_of_range(leaf: Leaf) -> st.SearchStrategy:
    below, above = [], []
    if leaf.kind == "int":
        below = [st.integers(int(leaf.low) - 10**6, int(leaf.low) - 1)] if leaf.low is not None else []
        above = [st.integers(int(leaf.high) + 1, int(leaf.high) + 10**6)] if leaf.high is not None else []
    elif leaf.kind == "float":
        if leaf.low is not None:  # closed bounds stay 1e-6 away: -0.0 is not below 0
            below = [st.floats(leaf.low - 1e6, leaf.low if leaf.open_low else leaf.low - 1e-6)]
        above = [st.floats(leaf.high + 1e-6, leaf.high + 1e6)] if leaf.high is not None else []
    elif leaf.kind == "hooks":
        below = [WORDS.map(lambda w: [f"blocks.0.nohook_{w}"]), st.just(["blocks.7.attn.hook_pattern"])]
    return st.one_of(*below, *above)


RANGED = {
    k
    for k, leaf in {**COMMON, **TASKS["sort"], **TASKS["induction"]}.items()
    if leaf.low is not None or leaf.high is not None or leaf.kind == "hooks"
}
BAD_NAMES = st.one_of(
    st.just(""),
    st.just("x" * 129),
    st.from_regex(r"[-._][a-z0-9]{0,8}", fullmatch=True),
    st.from_regex(r"[a-z]{1,5}[ /:;!@#][a-z]{1,5}", fullmatch=True),
)


@st.composite
def broken_configs(draw) -> tuple[dict, str, str]:
    """(config, the dotted field it breaks, how): a valid base broken in exactly one place."""
    base = draw(st.sampled_from(sorted(BASES)))
    raw, fields = copy.deepcopy(BASES[base]), {**COMMON, **TASKS[base]}
    how = draw(
        st.sampled_from(
            ["wrong type"] * 3 + ["out of range"] * 2 + ["unknown key", "section not a mapping", "task name"]
        )
    )
    if how == "wrong type":
        field = draw(st.sampled_from(sorted(fields)))
        leaf, suffix = fields[field], ""
        if leaf.kind in ("hooks", "pair_int", "pair_float") and draw(st.booleans()):
            value, suffix = draw(wrong_list(leaf))
        else:
            value = draw(wrong_scalar(leaf))
        put(raw, field, value)
        field += suffix
    elif how == "out of range":
        field = draw(st.sampled_from(sorted(RANGED & set(fields) | {"name"})))
        put(raw, field, draw(BAD_NAMES if field == "name" else out_of_range(fields[field])))
    elif how == "unknown key":
        level = draw(st.sampled_from(["", *SECTIONS]))
        key = draw(WORDS.filter(lambda k: k not in keys_of(base, level)))
        field = f"{level}.{key}" if level else key
        put(raw, field, draw(st.one_of(NUMBERS, WORDS)))
    elif how == "section not a mapping":
        field = draw(st.sampled_from(SECTIONS))
        put(raw, field, draw(st.one_of(NUMBERS, BOOLS, WORDS, LISTS, st.none())))
    else:  # an unknown or mistyped task name, or none at all
        field = "task.name"
        if draw(st.booleans()):
            del raw["task"]["name"]
        else:
            put(raw, field, draw(st.one_of(WORDS.filter(lambda w: w not in TASK_NAMES), NUMBERS, BOOLS, st.none())))
    return raw, field, how


def test_bases_are_valid():
    """The property test's bases load, so each broken config differs from a valid one in one place."""
    for raw in BASES.values():
        assert load_config(raw).name == raw["name"]


def invoke_train(config: Path, out: Path):
    """`toylens train` in-process, with training itself replaced by a failure: a config that
    validation lets through fails fast (exit 1) rather than training."""

    def refuse(*args, **kwargs):
        raise AssertionError("the config passed validation")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.import_module("toylens.train.loop"), "build_task", refuse)
        return CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--no-progress", "--device", "cpu"])


@settings(
    max_examples=800,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(broken_configs())
def test_every_broken_config_stops_with_one_line_naming_the_field(case):
    raw, field, how = case
    event(how)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "cfg.yaml", Path(tmp) / "runs"
        text = yaml.safe_dump(raw, sort_keys=False)
        assert yaml.safe_load(text) == raw, "the file must say what the generator meant"
        path.write_text(text)
        result = invoke_train(path, out)
        note(f"{how} {field}\n{text}\nstderr: {result.stderr}")
        assert result.exit_code == 2
        assert result.stdout == "" and result.stderr.endswith("\n") and result.stderr.count("\n") == 1
        assert result.stderr.startswith(f"error: {path}: {field}: ")
        assert "Traceback" not in result.stderr and isinstance(result.exception, SystemExit)
        assert not out.exists(), "nothing may be written before the config is valid"
