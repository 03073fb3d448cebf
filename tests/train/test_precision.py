"""`train.precision: bf16`: the training forward runs under bfloat16 autocast while the loss,
weights, gradients and AdamW stay float32. Stated tolerance: a bf16 run of the tiny sort task ends
within 10% of the float32 run's test loss (bfloat16 keeps 8 bits of mantissa, so the two
runs differ step by step but must learn the same thing); ensembles of bf16 members train like
their solo bf16 runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, tiny_model

from toylens import train
from toylens.storage import read_safetensors
from toylens.train.ensemble import train_ensemble
from toylens.train.precision import forward_autocast

pytestmark = pytest.mark.device


def _final(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["final"]


def test_bf16_forward_is_bfloat16_and_close_to_float32(device):
    model = tiny_model(device=device)
    tokens = torch.randint(0, 10, (4, 8), device=device)
    exact = model(tokens)
    with forward_autocast(torch.device(device), "bf16"):
        low = model(tokens)
    with forward_autocast(torch.device(device), "fp32"):
        same = model(tokens)
    assert low.dtype == torch.bfloat16 and same.dtype == torch.float32
    assert torch.equal(same, exact)
    assert 0 < (low.float() - exact).abs().max() <= 0.05 * exact.abs().max()


def test_a_bf16_run_learns_what_the_float32_run_learns(tmp_path, device):
    runs = {
        p: train(
            tiny_config(train={"epochs": 3, "precision": p}, name=f"tiny-{p}"), tmp_path, progress=False, device=device
        )
        for p in ("fp32", "bf16")
    }
    full, low = (_final(runs[p].run_dir) for p in ("fp32", "bf16"))
    start = json.loads((runs["fp32"].run_dir / "metrics.jsonl").read_text().splitlines()[0])["test/loss"]
    assert low["test/loss"] < start - 0.1  # it trains
    assert abs(low["test/loss"] - full["test/loss"]) <= 0.10 * full["test/loss"]
    weights = read_safetensors(runs["bf16"].run_dir / "final.safetensors")[0]
    assert all(w.dtype == torch.float32 for w in weights.values())
    reference = read_safetensors(runs["fp32"].run_dir / "final.safetensors")[0]
    assert any(not torch.equal(weights[k], reference[k]) for k in weights)  # bf16 was really used


def test_bf16_ensemble_members_train_like_their_solo_runs(tmp_path, device):
    cfgs = [
        tiny_config(train={"epochs": 2, "precision": "bf16", "lr": lr}, name=f"tiny-bf16-{i}")
        for i, lr in enumerate((1e-3, 3e-3))
    ]
    outcomes = train_ensemble(cfgs, tmp_path / "ensemble", progress=False, device=device)
    for cfg, outcome in zip(cfgs, outcomes):
        assert outcome.result is not None, outcome.error
        solo = train(cfg, tmp_path / "solo", progress=False, device=device)
        together, alone = _final(outcome.result.run_dir)["test/loss"], _final(solo.run_dir)["test/loss"]
        assert abs(together - alone) <= 0.05 * alone
