"""W&B logging in offline mode (no account, no network): what lands in W&B's own run files, read
back with an independent parser, equals metrics.jsonl; a resumed run continues its W&B run;
ensemble members each get their own W&B run in one process."""

from __future__ import annotations

import json

import pytest
import wandb
from conftest import tiny_config, wandb_run

from toylens import train
from toylens.rundir import RunDir
from toylens.train.callbacks import TrainCallback
from toylens.train.ensemble import train_ensemble


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    return tmp_path / "wb"


class Interrupt(TrainCallback):
    def on_epoch_end(self, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt


def test_offline_run_logs_config_and_every_epoch_and_resumes_the_same_run(tmp_path, offline):
    from toylens.train.wandb_log import WandbLogger

    cfg = tiny_config(train={"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, progress=False, callbacks=[WandbLogger("proj", group="g", dir=offline), Interrupt()])
    train(cfg, tmp_path, resume=True, progress=False, callbacks=[WandbLogger("proj", group="g", dir=offline)])
    wandb.teardown()  # W&B's service writes run files asynchronously; this waits for them
    rows = RunDir(tmp_path / "tiny").read_jsonl("metrics.jsonl")
    runs = wandb_run(offline)["tiny"]
    assert (
        len(runs) == 2
        and runs[0]["id"] == runs[1]["id"] == json.loads((tmp_path / "tiny" / "wandb.json").read_text())["id"]
    )
    first, resumed = runs
    assert first["group"] == "g" and first["config"]["train"]["lr"] == cfg.train.lr
    assert first["config"]["model"]["d_vocab"] == 11  # the resolved config
    assert [h["epoch"] for h in first["history"]] == [0, 1]
    assert [h["epoch"] for h in resumed["history"]] == [2]
    logged = first["history"] + resumed["history"]
    assert [h["_step"] for h in logged] == [r["step"] for r in rows]
    assert [h["test/loss"] for h in logged] == pytest.approx([r["test/loss"] for r in rows], rel=1e-12)


def test_ensemble_members_get_one_wandb_run_each(tmp_path, offline):
    from toylens.train.wandb_log import WandbLogger

    cfgs = [
        tiny_config(name=n, seed=s, train={"epochs": 1, "lr": lr}) for n, s, lr in [("p", 0, 0.003), ("q", 1, 0.01)]
    ]
    train_ensemble(cfgs, tmp_path, progress=False, callbacks=lambda c: [WandbLogger("proj", group="ens", dir=offline)])
    wandb.teardown()
    runs = wandb_run(offline)
    for cfg in cfgs:
        (run,) = runs[cfg.name]
        rows = RunDir(tmp_path / cfg.name).read_jsonl("metrics.jsonl")
        assert run["group"] == "ens" and run["config"]["train"]["lr"] == cfg.train.lr
        assert [h["test/loss"] for h in run["history"]] == pytest.approx([r["test/loss"] for r in rows], rel=1e-12)
