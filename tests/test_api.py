"""The package's face: `toylens` exports the pipeline, every stage takes a run the same ways
(str, path or RunDir), every device argument defaults to "auto", and resolving a device changes
nothing in the process (the entry points that want malloc tuned ask for it)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from conftest import TINY

import toylens
from toylens.device import resolve_device
from toylens.errors import ToylensError
from toylens.rundir import RunDir, as_rundir

FAST_LLC = dict(epsilon=1e-4, gamma=100.0, batch_size=16, chains=1, burnin=1, draws=2, init_batches=1)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 1}}))
    return path


def test_the_pipeline_is_exported():
    names = ("train", "load", "analyze", "llc_over_checkpoints", "calibrate_llc", "development", "report", "sweep")
    for name in (*names, "reproduce"):
        assert callable(getattr(toylens, name)), name
        assert name in toylens.__all__
    assert all(hasattr(toylens, name) for name in toylens.__all__)
    assert toylens.llc_over_checkpoints is importlib.import_module("toylens.llc.driver").llc_over_checkpoints
    assert toylens.calibrate_llc is importlib.import_module("toylens.llc.calibration").calibrate
    assert toylens.development is importlib.import_module("toylens.development.driver").development
    assert toylens.sweep is importlib.import_module("toylens.sweep").run_sweep
    assert toylens.__version__ == importlib.metadata.version("toylens")


def test_the_exported_functions_survive_their_modules_being_imported():
    """train, development, report, sweep and reproduce are also module names; importing a submodule
    later must not replace the function on the package."""
    importlib.import_module("toylens.sweep.local")
    importlib.import_module("toylens.train.wandb_log")
    importlib.import_module("toylens.report.png")
    importlib.import_module("toylens.development.stages")
    for name in ("train", "development", "report", "sweep", "reproduce"):
        assert inspect.isfunction(getattr(toylens, name)), name


def test_every_device_argument_defaults_to_auto():
    export = importlib.import_module("toylens.export")
    ensemble = importlib.import_module("toylens.train.ensemble")
    functions = [
        toylens.train,
        toylens.load,
        toylens.analyze,
        toylens.llc_over_checkpoints,
        toylens.calibrate_llc,
        toylens.development,
        toylens.sweep,
        toylens.reproduce,
        export.export_transformer_lens,
        export.load_transformer_lens,
        ensemble.train_ensemble,
    ]
    for fn in functions:
        assert inspect.signature(fn).parameters["device"].default == "auto", fn.__qualname__


def test_resolving_a_device_has_no_side_effect():
    from toylens.memory import reuse_freed_memory

    reuse_freed_memory.cache_clear()
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device() == resolve_device("auto")
    assert reuse_freed_memory.cache_info().currsize == 0, "resolve_device tuned malloc"
    with pytest.raises(ToylensError, match="^--device 'tpu:9'"):
        resolve_device("tpu:9")


def test_pipeline_takes_a_run_as_str_path_or_rundir(config, tmp_path, monkeypatch):
    tuned: list[str] = []
    for module in ("toylens.train.loop", "toylens.analysis.driver", "toylens.llc.driver"):
        monkeypatch.setattr(importlib.import_module(module), "reuse_freed_memory", lambda m=module: tuned.append(m))

    result = toylens.train(config, tmp_path / "runs", device="cpu", progress=False)
    run = RunDir(result.run_dir)
    assert toylens.analyze(run, only=["weight_norms"], device="cpu", progress=False) == [
        "analysis/epoch-0001/weight_norms"
    ]
    assert toylens.analyze(str(run.path), only=["weight_norms"], device="cpu", progress=False) == []  # done
    from toylens.analysis import WeightNorms, load_result

    assert isinstance(load_result(str(run.path), "analysis/epoch-0001/weight_norms"), WeightNorms)
    assert WeightNorms.load(run.path, "analysis/epoch-0001/weight_norms").total_matrices
    from toylens.llc import LLCSettings

    estimates = toylens.llc_over_checkpoints(
        str(run.path), "final", settings=LLCSettings(**FAST_LLC), device="cpu", progress=False
    )
    assert list(estimates) == ["all"] and list(estimates["all"]) == ["epoch-0001"]
    assert toylens.report(run, tmp_path / "one.html", png=False).path.is_file()
    assert toylens.report([run], tmp_path / "two.html", png=False).sections
    for given in (run, run.path, str(run.path)):
        loaded = toylens.load(given)
        assert loaded.epoch == 1 and loaded.device.type == resolve_device("auto").type
    assert tuned == ["toylens.train.loop", "toylens.analysis.driver", "toylens.analysis.driver", "toylens.llc.driver"]


def test_a_path_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(ToylensError, match=f"^{tmp_path / 'nope'}: run directory not found$"):
        as_rundir(tmp_path / "nope")
    with pytest.raises(ToylensError, match="is not a toylens run directory"):
        toylens.analyze(tmp_path, progress=False)
    with pytest.raises(ToylensError, match=f"^{tmp_path / 'nope'}: run directory not found$"):
        toylens.llc_over_checkpoints(str(tmp_path / "nope"), progress=False)
    with pytest.raises(ToylensError, match="run directory not found"):
        toylens.load(tmp_path / "nope")
    with pytest.raises(TypeError):  # under pytest, jaxtyping's check of the annotation fires first
        as_rundir(3)  # type: ignore[arg-type]
    assert as_rundir(RunDir(tmp_path)).path == tmp_path  # a RunDir is taken as it is
