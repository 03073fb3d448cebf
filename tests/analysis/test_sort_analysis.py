"""Acceptance on the study-2 no-decay sorting model (configs/sort-no-decay.yaml, trained here).

What a sorting transformer must do is known: at SEP it must read the list's minimum, and at each
output position the value it writes next. The model trained by the shipped config does route
attention that way, with its two heads splitting the lists between them: so "a position attends
most to a token" is measured per layer (some head's most-attended key is that token).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toylens import load
from toylens.analysis import ablate, analyze, head_scores, load_result
from toylens.analysis.attention import next_output
from toylens.rundir import RunDir, resolve_one
from toylens.train import train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sort-no-decay.yaml"


@pytest.fixture(scope="module")
def sort_run(tmp_path_factory):
    return train(CONFIG, tmp_path_factory.mktemp("sort"), progress=False).run_dir


@pytest.mark.slow
def test_sort_attention_and_ablation(sort_run):
    run = load(sort_run)
    model, task = run.model, run.task
    test = task.splits["test"].batch(torch.arange(len(task.splits["test"])))  # all 2000 held-out lists
    scores = head_scores(model, test.tokens, {"next": next_output}, test.targets, per_position=True)["next"]
    n = task.n  # SEP is at position n; outputs at n..2n-1
    sep_hit = float(scores.layer_hit[0, n])
    print(
        f"SEP -> min: layer hit {sep_hit:.3f}, per-head hits {scores.hit[0, :, n].tolist()}, "
        f"per-head attention {scores.score[0, :, n].tolist()}"
    )
    print("output positions: layer hit", scores.layer_hit[0, n : 2 * n].tolist())
    print("output positions: best head's mean attention", scores.score[0, :, n : 2 * n].max(0).values.tolist())
    assert sep_hit >= 0.95
    assert (scores.layer_hit[0, n : 2 * n] >= 0.8).all()
    assert scores.layer_hit[0, :n].isnan().all(), "no target before SEP"

    mean = ablate(model, test.tokens[:500], test.targets[:500], "mean", neurons=False)
    print("mean-ablation loss change per head", mean.heads.tolist(), "base loss", mean.base_loss)
    assert mean.heads.max() >= 1.0


@pytest.mark.slow
def test_sort_analyze_writes_what_the_report_needs(sort_run):
    analyze(sort_run, "final", progress=False)
    rundir = RunDir(sort_run)
    final = resolve_one(rundir, "final").name  # results of "final" are stored under its checkpoint
    summary = load_result(rundir, f"analysis/{final}/summary")
    assert summary.scalars["ablation/mean/heads.max"] >= 1.0
    by_pos = load_result(rundir, f"analysis/{final}/head_scores/next_output_by_pos")
    assert by_pos.layer_hits[0, 10] >= 0.9  # SEP, on the 256 analysed lists
    grid = load_result(rundir, f"analysis/{final}/patching/logit_diff/resid_pre")
    assert grid.clean > 0 > grid.corrupted  # the clean answers win on clean inputs, lose on corrupted ones
    # One list token differs; restoring the whole residual there at layer 0 is the clean run.
    changed = int(grid.corruption.split()[2]) - 1
    assert abs(float(grid.normalized[0, changed]) - 1) < 1e-4
    assert grid.normalized[0, :changed].abs().max() < 1e-4, "earlier positions never see the change"
