"""Vectorised ensembles: every member ends where its solo run ends, in float64 to 1e-9 after
38 AdamW steps (so a wrong data order, schedule, clip or update cannot hide in float32 noise;
the solo runs are the CPU reference, the ensemble trains on the test device, see `agree`);
members get ordinary run directories; a diverging member stops alone; an interrupted ensemble
resumes, as an ensemble or member by member."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from toylens import load, train
from toylens.errors import ToylensError
from toylens.rundir import RunDir
from toylens.train.callbacks import TrainCallback
from toylens.train.ensemble import ensemble_key, train_ensemble

HOOKS = ["blocks.0.mlp.hook_post"]


def member(name: str, seed: int, **train_fields) -> object:
    fields = {"epochs": 2, "batch_size": 32, "l1": {"hooks": HOOKS, "coef": 0.0}, **train_fields}
    return tiny_config(name=name, seed=seed, train=fields)


def members() -> list:
    return [
        member("a", 0),
        member("b", 1, lr=0.01, weight_decay=0.3),
        member("c", 2, weight_decay=1.0, l1={"hooks": HOOKS, "coef": 0.01}),
    ]


@pytest.fixture(scope="module")
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def solo(tmp_path_factory, float64):
    out = tmp_path_factory.mktemp("solo")
    for cfg in members():
        train(cfg, out, progress=False, device="cpu")
    return out


def agree(device: torch.device) -> float:
    """Largest weight difference between an ensemble member on `device` and its solo run on the
    CPU. On CUDA the float64 reductions (matmuls, the clipping norm) sum in another order; 38
    AdamW steps carry that rounding to about 1e-12 relative, so 1e-7 still catches any real error
    (a wrong batch or step moves weights by more than 1e-4)."""
    return 1e-9 if device.type == "cpu" else 1e-7


def max_diff(run_a, run_b) -> float:
    a, b = load(run_a, device="cpu").model.state_dict(), load(run_b, device="cpu").model.state_dict()
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_members_match_solo_runs_and_a_diverging_member_stops_alone(tmp_path, solo, device):
    diverging = member("d", 3, lr=1e300)  # AdamW steps of ~1e300 overflow to inf, then NaN
    outcomes = train_ensemble(members() + [diverging], tmp_path, progress=False, device=device)
    assert [o.name for o in outcomes] == ["a", "b", "c", "d"]
    assert all(o.error is None for o in outcomes[:3])
    assert outcomes[3].result is None and "d: loss became nan" in outcomes[3].error
    assert "checkpoints/epoch-000" in outcomes[3].error
    for cfg in members():
        assert max_diff(tmp_path / cfg.name, solo / cfg.name) < agree(device), cfg.name
        ens, ref = RunDir(tmp_path / cfg.name), RunDir(solo / cfg.name)
        assert [c.name for c in ens.checkpoints()] == [c.name for c in ref.checkpoints()]
        rows, ref_rows = ens.read_jsonl("metrics.jsonl"), ref.read_jsonl("metrics.jsonl")
        assert [r.keys() for r in rows] == [r.keys() for r in ref_rows]  # train/l1 only for c
        for r, s in zip(rows, ref_rows):
            assert r["test/loss"] == pytest.approx(s["test/loss"], abs=agree(device))
            assert r.get("train/loss", 0) == pytest.approx(s.get("train/loss", 0), abs=agree(device))
        assert load(ens.path, "best", device=device).epoch >= 1
        # A finished member is a finished run: resuming it alone does nothing.
        assert train(cfg, tmp_path, resume=True, progress=False, device=device).run_dir == ens.path
    assert not RunDir(tmp_path / "d").has("summary.json")
    good = load(tmp_path / "d", RunDir(tmp_path / "d").checkpoints()[-1].name, device=device).model
    assert all(torch.isfinite(p).all() for p in good.parameters())


class StopAfterEpoch(TrainCallback):
    def on_epoch_end(self, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt


def test_interrupted_ensemble_resumes_as_ensemble_or_alone(tmp_path, solo, device):
    cfgs = members()
    last = cfgs[-1].name  # interrupt after the last member has checkpointed epoch 1
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(
            cfgs,
            tmp_path,
            progress=False,
            device=device,
            callbacks=lambda cfg: [StopAfterEpoch()] if cfg.name == last else [],
        )
    for cfg in cfgs:
        run = RunDir(tmp_path / cfg.name)
        assert run.checkpoints()[-1].name == "epoch-0001" and not run.has("summary.json")
    # Member a resumes as a plain run from the ensemble's checkpoint (optimizer state included).
    train(cfgs[0], tmp_path, resume=True, progress=False, device=device)
    outcomes = train_ensemble(cfgs[1:], tmp_path, resume=True, progress=False, device=device)
    assert all(o.error is None for o in outcomes)
    for cfg in cfgs:
        assert max_diff(tmp_path / cfg.name, solo / cfg.name) < agree(device), cfg.name
        assert [r["epoch"] for r in RunDir(tmp_path / cfg.name).read_jsonl("metrics.jsonl")] == [0, 1, 2]


def test_members_stop_at_max_steps_where_their_solo_runs_stop(tmp_path, float64, device):
    # 600 lists in batches of 32: 19 steps per epoch, so a limit of 25 cuts epoch 2 short.
    cfgs = [member("a", 0, max_steps=25), member("b", 1, lr=0.01, weight_decay=0.3, max_steps=25)]
    for cfg in cfgs:
        train(cfg, tmp_path / "solo", progress=False, device="cpu")
    outcomes = train_ensemble(cfgs, tmp_path / "ensemble", progress=False, device=device)
    assert all(o.error is None and o.result is not None and o.result.metrics["step"] == 25 for o in outcomes)
    for cfg in cfgs:
        ens, ref = RunDir(tmp_path / "ensemble" / cfg.name), RunDir(tmp_path / "solo" / cfg.name)
        assert max_diff(ens.path, ref.path) < agree(device), cfg.name
        assert [(c.name, c.step) for c in ens.checkpoints()] == [
            ("epoch-0000", 0),
            ("epoch-0001", 19),
            ("epoch-0002", 25),
        ]
        assert [(c.name, c.step) for c in ens.checkpoints()] == [(c.name, c.step) for c in ref.checkpoints()]
        rows, ref_rows = ens.read_jsonl("metrics.jsonl"), ref.read_jsonl("metrics.jsonl")
        assert rows[-1]["train/loss"] == pytest.approx(ref_rows[-1]["train/loss"], abs=agree(device))  # 6 steps
        assert ens.read_json("summary.json")["steps"] == 25


def test_incompatible_members_are_refused(tmp_path):
    a = member("a", 0)
    assert ensemble_key(a) == ensemble_key(member("b", 5, lr=0.1, weight_decay=2.0))
    with pytest.raises(ToylensError, match="b differs from a in .*train.*; members may differ only in seed"):
        train_ensemble([a, member("b", 0, batch_size=64)], tmp_path, progress=False)
    with pytest.raises(ToylensError, match="distinct names"):
        train_ensemble([a, member("a", 1)], tmp_path, progress=False)
