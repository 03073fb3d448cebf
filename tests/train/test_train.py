"""Training: the run directory, regularisers, divergence. Resuming after SIGKILL is tested in
test_resume.py, at the default thread count."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import TINY, tiny_config

from toylens import load, train
from toylens.config import validate_config
from toylens.errors import ToylensError, TrainingDiverged
from toylens.rundir import RunDir
from toylens.storage import read_safetensors, sha256_file
from toylens.train.optim import build_optimizer, lr_at
from toylens.train.regularisers import L1Penalty, decays


def test_run_directory_contents(tmp_path, device):
    cfg = tiny_config(train={"epochs": 2, "log_checkpoints": 5})
    result = train(cfg, tmp_path, progress=False, device=device)
    run = RunDir(result.run_dir)
    names = [c.name for c in run.checkpoints()]
    assert names[0] == "epoch-0000" and "epoch-0001" in names and names[-1] == "epoch-0002"
    assert any(n.startswith("step-") for n in names)
    rows = run.read_jsonl("metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["test/loss"] < rows[0]["test/loss"]
    assert {"train/loss", "test/acc", "test/list_acc"} <= rows[-1].keys()
    manifest = json.loads((run.path / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        assert sha256_file(run.path / rel) == entry["sha256"], rel
    assert {
        "config.yaml",
        "metrics.jsonl",
        "final.safetensors",
        "summary.json",
        "checkpoints/epoch-0002.state.safetensors",
    } <= manifest["files"].keys()
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["model"]["d_vocab"] == 11 and saved["model"]["n_ctx"] == 8
    assert not list(run.path.rglob("*.tmp"))
    loaded = load(run.path, device=device)
    assert loaded.step == result.metrics["step"] and loaded.config.name == "tiny"
    assert next(loaded.model.parameters()).device.type == device.type
    final, _ = read_safetensors(run.path / "final.safetensors")
    last, _ = read_safetensors(run.path / "checkpoints/epoch-0002.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert load(run.path, 1).epoch == 1 and load(run.path, "best").epoch >= 1


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    cfg = tiny_config(train={"epochs": 1})
    train(cfg, tmp_path, progress=False)
    with pytest.raises(ToylensError, match="--resume"):
        train(cfg, tmp_path, progress=False)
    assert train(cfg, tmp_path, resume=True, progress=False).run_dir == tmp_path / "tiny"  # already complete
    with pytest.raises(ToylensError, match="config differs from the saved run in train.lr"):
        train(tiny_config(train={"epochs": 1, "lr": 0.1}), tmp_path, resume=True, progress=False)
    train(tiny_config(train={"epochs": 1, "lr": 0.1}), tmp_path, overwrite=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from toylens.tasks.sort import SortTask

    calls = {"n": 0}
    original = SortTask.loss

    def poisoned(self, logits, batch):
        calls["n"] += 1
        loss = original(self, logits, batch)
        return loss * float("nan") if calls["n"] > 12 else loss  # 10 steps per epoch: dies in epoch 2

    monkeypatch.setattr(SortTask, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 2 .*checkpoints/epoch-0001\.safetensors"):
        train(tiny_config(train={"epochs": 3}), tmp_path, progress=False)
    run = RunDir(tmp_path / "tiny")
    assert [c.name for c in run.checkpoints()] == ["epoch-0000", "epoch-0001"]
    assert all(torch.isfinite(t).all() for t in run.read_tensors("checkpoints/epoch-0001.safetensors")[0].values())


def test_weight_decay_groups():
    assert decays("blocks.0.attn.W_Q", "matrices") and decays("unembed.W_U", "matrices")
    assert not decays("embed.W_E", "matrices") and decays("embed.W_E", "embeddings")
    assert not decays("blocks.0.attn.b_Q", "embeddings") and decays("blocks.0.ln1.w", "all")
    from conftest import tiny_model

    model = tiny_model()
    opt = build_optimizer(model, tiny_config(train={"weight_decay": 0.3}).train)
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.3 for p in g["params"]}
    assert decayed == {
        n for n in by_id.values() if n.rsplit(".", 1)[-1] in {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U"}
    }


def test_weight_decay_shrinks_weights(tmp_path, device):
    norms = {}
    for wd in (0.0, 10.0):  # lr * wd = 3% shrink per step over 20 steps
        cfg = tiny_config(name=f"wd{wd}", train={"epochs": 2, "weight_decay": wd})
        w = load(train(cfg, tmp_path, progress=False, device=device).run_dir, device="cpu").model
        norms[wd] = float(w.W_Q.detach().norm()), float(w.W_E.detach().norm())
    assert norms[10.0][0] < 0.8 * norms[0.0][0], "matrices decay"
    assert norms[10.0][1] > 0.9 * norms[0.0][1], "embeddings do not, by default"


def test_l1_penalty_value_and_effect(tmp_path):
    from conftest import tiny_model

    model = tiny_model()
    tokens = torch.randint(0, 11, (4, 8))
    pen = L1Penalty(tiny_config(train={"l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.5}}).train.l1)
    with model.hooks(pen.fwd_hooks):
        model(tokens)
    _, cache = model.run_with_cache(tokens)
    assert float(pen.take().detach()) == pytest.approx(0.5 * float(cache["post", 0].abs().sum(-1).mean()), rel=1e-6)
    assert float(pen.take()) == 0.0
    # With ReLU outputs the norm is a plain sum: the same value and the same gradient as abs.
    relu = tiny_model(act_fn="relu")
    cfg = tiny_config(train={"l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.5}}).train.l1
    got = []
    for act_fn in (None, "relu"):
        p = L1Penalty(cfg, act_fn)
        with relu.hooks(p.fwd_hooks):
            relu(tokens)
        value = p.take()
        got.append((value.detach(), torch.autograd.grad(value, list(relu.parameters()), allow_unused=True)))
    assert torch.equal(got[0][0], got[1][0])
    for a, b in zip(got[0][1], got[1][1]):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-6, atol=1e-8)
    l1 = {}
    for coef in (0.0, 0.05):
        cfg = tiny_config(
            name=f"l1-{coef}", train={"epochs": 2, "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": coef}}
        )
        m = load(train(cfg, tmp_path, progress=False).run_dir).model
        _, cache = m.run_with_cache(tokens)
        l1[coef] = float(cache["post", 0].abs().sum(-1).mean())
    assert l1[0.05] < 0.7 * l1[0.0]


def test_lr_schedule():
    cfg = tiny_config(train={"lr": 1.0, "warmup_steps": 10, "schedule": "cosine", "min_lr_ratio": 0.1}).train
    assert lr_at(0, 110, cfg) == pytest.approx(0.1) and lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.55) and lr_at(110, 110, cfg) == pytest.approx(0.1)
    const = tiny_config(train={"lr": 1.0, "schedule": "constant", "warmup_steps": 0}).train
    assert lr_at(50, 110, const) == 1.0


def test_unknown_select_metric(tmp_path):
    with pytest.raises(ToylensError, match="train.select_metric: 'val/loss' is not a metric"):
        train(tiny_config(train={"epochs": 1, "select_metric": "val/loss"}), tmp_path, progress=False)


@pytest.mark.parametrize("metric,pick", [("val/ppl", min), ("val/loss", min), ("val/acc", max)])
def test_best_checkpoint_follows_the_metric_direction(tmp_path, metric, pick):
    """The task says which way each metric is better: the lowest perplexity is the best checkpoint
    (a name not ending in "loss" once meant "higher is better", keeping the worst)."""
    doc = tmp_path / "a.txt"
    doc.write_text("the cat sat on the mat. the dog sat on the log.\n" * 150)
    task = {
        "name": "lm",
        "dataset": "files",
        "files": [str(doc)],
        "tokenizer": "char",
        "n_ctx": 16,
        "cache_dir": str(tmp_path / "cache"),
    }
    cfg = validate_config(
        {**TINY, "task": task, "train": {**TINY["train"], "epochs": 3, "lr": 0.01, "select_metric": metric}}
    )
    run = RunDir(train(cfg, tmp_path / "runs", progress=False).run_dir)
    values = {f"epoch-{r['epoch']:04d}": r[metric] for r in run.read_jsonl("metrics.jsonl") if r["epoch"] > 0}
    assert min(values.values()) < max(values.values()), "the epochs differ: the direction decides"
    best = run.read_json("summary.json")["best"]
    assert best["value"] == pick(values.values()) and best["metric"] == metric
    assert best["checkpoint"] == next(name for name, v in values.items() if v == best["value"])  # the first of ties


def test_a_metric_without_a_direction_is_named(tmp_path, monkeypatch):
    from toylens.tasks import SortTask

    monkeypatch.setattr(SortTask, "metric_goals", {"loss": "min", "acc": "max"})  # list_acc left out
    with pytest.raises(ToylensError, match="train.select_metric: metric 'test/list_acc': the sort task does not say"):
        train(tiny_config(train={"epochs": 1, "select_metric": "test/list_acc"}), tmp_path, progress=False)
