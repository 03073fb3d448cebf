"""`train.max_steps`: a run stops after that many optimisation steps and is still a finished run
(stop checkpoint, final weights, summary, an evaluation at the stop) that loads, analyses and does
not train further on --resume; a limit at or above the run's length changes nothing. Ensembles
stop where their members' solo runs stop (tests/train/test_ensemble.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from toylens import load, train
from toylens.analysis import Settings, analyze
from toylens.errors import ToylensError
from toylens.rundir import RunDir
from toylens.storage import read_safetensors
from toylens.train.callbacks import TrainCallback
from toylens.train.loop import Trainer
from toylens.train.optim import lr_at

# The tiny sort run: 600 training lists in batches of 64 = 10 steps per epoch; 3 epochs = 30 steps.
STEPS_PER_EPOCH = 10


def capped(max_steps: int | None, **train_fields) -> object:
    return tiny_config(train={"epochs": 3, "max_steps": max_steps, **train_fields})


def weights(run_dir, rel: str = "final.safetensors") -> dict[str, torch.Tensor]:
    return read_safetensors(run_dir / rel)[0]


def test_a_run_stops_mid_epoch_at_max_steps_and_is_a_finished_run(tmp_path, device):
    cfg = capped(13, log_checkpoints=4)
    result = train(cfg, tmp_path, progress=False, device=device)
    run = RunDir(result.run_dir)
    checkpoints = [(c.name, c.epoch, c.step, c.resumable) for c in run.checkpoints()]
    epochs = [c for c in checkpoints if c[0].startswith("epoch-")]
    assert epochs == [("epoch-0000", 0, 0, True), ("epoch-0001", 1, 10, True), ("epoch-0002", 2, 13, True)]
    assert all(step < 13 for name, _, step, _ in checkpoints if name.startswith("step-"))  # none at the stop
    rows = run.read_jsonl("metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (1, 10), (2, 13)]
    assert {"train/loss", "test/loss", "test/acc"} <= rows[-1].keys()
    assert rows[-1]["lr"] == pytest.approx(lr_at(12, 13, cfg.train))  # the schedule spans the 13 steps
    summary = run.read_json("summary.json")
    assert (summary["steps"], summary["epochs"]) == (13, 2) and summary["final"] == rows[-1]
    final, last = weights(run.path), weights(run.path, "checkpoints/epoch-0002.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)

    loaded = load(run.path, device=device)
    assert (loaded.step, loaded.epoch) == (13, 2)
    small = Settings(n_examples=8, n_patch=4, n_repeated=4)
    written = analyze(run.path, "final", settings=small, progress=False, device=device)
    assert any(w.startswith("analysis/epoch-0002/circuits") for w in written)

    # --resume of the finished run trains no further; another limit is another config.
    before = [c.name for c in run.checkpoints()]
    again = train(cfg, tmp_path, resume=True, progress=False, device=device)
    assert again.metrics["step"] == 13 and [c.name for c in run.checkpoints()] == before
    assert all(torch.equal(final[k], weights(run.path)[k]) for k in final)
    with pytest.raises(ToylensError, match="config differs from the saved run in train.max_steps"):
        train(capped(20, log_checkpoints=4), tmp_path, resume=True, progress=False)


def test_a_run_interrupted_at_its_stop_resumes_to_the_same_end(tmp_path, monkeypatch):
    reference = train(capped(13), tmp_path / "ref", progress=False).run_dir

    class StopAfterEpoch1(TrainCallback):
        def on_epoch_end(self, row):
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(capped(13), tmp_path, progress=False, callbacks=[StopAfterEpoch1()])
    # Killed after the stop checkpoint was written, before the summary: the resumed run only finishes.
    real_write_summary = Trainer._write_summary
    monkeypatch.setattr(Trainer, "_write_summary", lambda self, wall_s: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(capped(13), tmp_path, resume=True, progress=False)
    run = RunDir(tmp_path / "tiny")
    assert run.checkpoints()[-1].step == 13 and not run.has("summary.json")
    monkeypatch.setattr(Trainer, "_write_summary", real_write_summary)
    result = train(capped(13), tmp_path, resume=True, progress=False)
    assert result.metrics["step"] == 13
    assert [(r["epoch"], r["step"]) for r in run.read_jsonl("metrics.jsonl")] == [(0, 0), (1, 10), (2, 13)]
    ref, got = weights(reference), weights(run.path)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("max_steps", [3 * STEPS_PER_EPOCH, 1000])
def test_a_limit_at_or_above_the_run_length_changes_nothing(tmp_path, max_steps):
    plain = RunDir(train(capped(None), tmp_path / "plain", progress=False).run_dir)
    limited = RunDir(train(capped(max_steps), tmp_path / "limited", progress=False).run_dir)
    a, b = weights(plain.path), weights(limited.path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [c.name for c in plain.checkpoints()] == [c.name for c in limited.checkpoints()]
    drop_time = [{k: v for k, v in r.items() if k != "wall_s"} for r in plain.read_jsonl("metrics.jsonl")]
    assert drop_time == [{k: v for k, v in r.items() if k != "wall_s"} for r in limited.read_jsonl("metrics.jsonl")]


def test_max_steps_is_validated_and_documented():
    from toylens.config import field_docs

    with pytest.raises(ToylensError, match="train.max_steps"):
        tiny_config(train={"max_steps": 0})
    with pytest.raises(ToylensError, match="train.max_steps"):
        tiny_config(train={"max_steps": 2.5})
    docs = {name: doc for name, _, doc in field_docs()}
    assert "optimisation steps" in docs["train.max_steps"]
