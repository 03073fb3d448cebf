"""`train.compile`: a few steps of compiled training give the eager run's losses, solo and as an
ensemble, with the L1 penalty's hooks inside the compiled graph.

Backend: on CUDA the real one, inductor. On the CPU "aot_eager" (`compiled.BACKEND`): the same
graph capture (dynamo), hooks and autograd, without inductor's C++ code generation, which takes
about 40 s per batch shape on 2 cores and needs a compiler a CI machine may not have.

Stated tolerance: every logged loss within 1e-4 relative (plus `tol(device)` absolute) of the
eager run's, after 10 steps at lr 3e-3. A compiled graph sums in other orders than eager kernels,
so losses drift apart by float rounding only, far below what a wrong graph (a hook lost, a stale
weight) would change.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tol
from torch._dynamo.utils import counters

from toylens import train
from toylens.errors import ToylensError
from toylens.rundir import RunDir
from toylens.tasks import Batch
from toylens.train import compiled
from toylens.train.ensemble import train_ensemble

SETTINGS = {
    "task": {"name": "sort", "list_len": 4, "n_values": 10, "n_train": 640, "n_test": 64},  # 10 full batches
    "train": {"epochs": 1, "lr": 0.003, "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.01}},
}


@pytest.fixture
def backend(device, monkeypatch) -> str:
    """The backend for this device; and jaxtyping's run-time shape checks (on under pytest) off,
    since dynamo would trace into beartype's checking code and fail on it (Batch's checked
    __init__ still inspects its signature when checks are off, a graph break inside vmap, so it
    gets back its plain dataclass __init__)."""
    import jaxtyping

    name = "inductor" if device.type == "cuda" else "aot_eager"
    monkeypatch.setattr(compiled, "BACKEND", name)
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)
    monkeypatch.setattr(Batch, "__init__", getattr(Batch.__init__, "__wrapped__", Batch.__init__))
    torch._dynamo.reset()
    counters.clear()
    return name


def _rows(run_dir) -> list[dict]:
    return RunDir(run_dir).read_jsonl("metrics.jsonl")


def _assert_one_graph() -> None:
    """The compiled run's forward was captured whole: one graph (every step has the same shapes),
    no graph breaks, so nothing of it ran eagerly."""
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], "; ".join(
        counters["graph_break"]
    ).replace("\n", " ")[:1500]


def _assert_same_losses(eager: list[dict], fast: list[dict], device: torch.device) -> None:
    assert len(eager) == len(fast) == 2  # the initialisation and epoch 1
    for a, b in zip(eager, fast):
        for key in ("train/loss", "train/l1", "test/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=tol(device)), key
    assert "train/l1" not in fast[1] or fast[1]["train/l1"] > 0  # the penalty's hook ran inside the compiled forward


def test_compiled_training_gives_the_eager_losses(tmp_path, device, backend):
    runs = {}
    for flag in (False, True):
        cfg = tiny_config(**SETTINGS, name=f"compile-{flag}")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": flag})})
        runs[flag] = train(cfg, tmp_path, progress=False, device=device).run_dir
    _assert_one_graph()
    _assert_same_losses(_rows(runs[False]), _rows(runs[True]), device)
    saved = RunDir(runs[True]).read_tensors("final.safetensors")[0]
    assert not any("_orig_mod" in k or "module." in k for k in saved)  # the plain model was saved


def test_a_compiled_ensemble_gives_the_eager_ensembles_losses(tmp_path, device, backend):
    def members(flag: bool) -> list:
        base = tiny_config(task=SETTINGS["task"], train={"epochs": 1})  # no L1: see the next test
        train_cfg = base.train.model_copy(update={"compile": flag})
        return [
            base.model_copy(update={"name": f"m{i}", "seed": i, "train": train_cfg.model_copy(update={"lr": lr})})
            for i, lr in enumerate((0.003, 0.01))
        ]

    for flag in (False, True):
        outcomes = train_ensemble(members(flag), tmp_path / str(flag), progress=False, device=device)
        assert all(o.error is None for o in outcomes)
    _assert_one_graph()
    for name in ("m0", "m1"):
        _assert_same_losses(_rows(tmp_path / "False" / name), _rows(tmp_path / "True" / name), device)


def test_an_ensemble_with_an_l1_penalty_trains_uncompiled(tmp_path, device, backend, caplog):
    base = tiny_config(**SETTINGS)
    cfgs = [
        base.model_copy(update={"name": f"m{i}", "seed": i, "train": base.train.model_copy(update={"compile": True})})
        for i in range(2)
    ]
    outcomes = train_ensemble(cfgs, tmp_path, progress=False, device=device)
    assert all(o.error is None for o in outcomes)
    assert "trains uncompiled" in caplog.text and not counters["stats"]["unique_graphs"]
    assert _rows(tmp_path / "m0")[1]["train/l1"] > 0


def test_no_cpp_compiler_stops_training_before_it_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "inductor")
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    cfg = tiny_config(name="no-compiler")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": True})})
    with pytest.raises(ToylensError, match=r"^train\.compile: "):
        train(cfg, tmp_path, progress=False, device="cpu")
    with pytest.raises(ToylensError, match=r"^train\.compile: "):
        train_ensemble([cfg], tmp_path, progress=False, device="cpu")
    assert not (tmp_path / "no-compiler").exists()


def test_no_cpp_compiler_is_one_line_naming_the_field(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "inductor")
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    with pytest.raises(ToylensError, match=r"^train\.compile: .*C\+\+ compiler.*train\.compile=false") as e:
        compiled.compile_forward(lambda x: x, True, torch.device("cpu"))
    assert "\n" not in str(e.value)
    fn = compiled.compile_forward(abs, False, torch.device("cpu"))
    assert fn is abs  # off: the eager function itself
