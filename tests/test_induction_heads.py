"""Induction heads, scored as the field does, on the shipped induction configs (trained here).

configs/induction-2l.yaml (2 layers, attention only) must grow an induction head in layer 1 that
K-composes with a previous-token head in layer 0 and copies through its OV circuit;
configs/induction-1l.yaml, trained the same way, cannot. The scores over the run's checkpoints
must show the jump (the phase change) rather than a slow drift.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toylens import load
from toylens.analysis import Settings, analyze, composition_scores, copying_scores, load_result, repeated_token_scores
from toylens.analysis.composition import strongest_source
from toylens.rundir import RunDir
from toylens.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, induction_2l):
    out = tmp_path_factory.mktemp("induction")
    return {"2l": induction_2l, "1l": train(CONFIGS / "induction-1l.yaml", out, progress=False).run_dir}


def scores(run_dir: Path):
    run = load(run_dir)
    return run, repeated_token_scores(run.model, run.task.random_token_ids(), run.task.bos_token(), n_seq=100, half=50)


@pytest.fixture(scope="module")
def circuit(runs):
    """The best layer-1 induction head, its strongest K-composition source, and the scores."""
    run, s = scores(runs["2l"])
    induction, previous = s.scores["induction"], s.scores["previous_token"]
    head = int(induction[1].argmax())
    comp = composition_scores(run.model)
    layer, source = strongest_source(comp.k, 1, head)
    copying = copying_scores(run.model, torch.arange(run.task.cfg.n_vocab))
    print("induction", induction.tolist(), "previous_token", previous.tolist(), "copying", copying.tolist())
    print(
        f"L1H{head}: K-composition from layer 0 {comp.k[0, :, 1, head].tolist()} (random baseline "
        f"{comp.baseline_mean['k']:.3f} +- {comp.baseline_std['k']:.3f})"
    )
    return dict(induction=induction, previous=previous, head=head, source=(layer, source), comp=comp, copying=copying)


@pytest.mark.slow
def test_two_layers_grow_a_copying_induction_head(circuit):
    head = circuit["head"]
    assert circuit["induction"][1, head] >= 0.4
    assert circuit["copying"][1, head] > 0.5
    layer, source = circuit["source"]
    assert layer == 0 and circuit["comp"].k[0, source, 1, head] > 3 * circuit["comp"].baseline_mean["k"] / 2
    assert circuit["previous"][0, source] == circuit["previous"][0].max(), (
        "K-composes most with the best previous-token head"
    )


@pytest.mark.slow
def test_its_k_composition_source_is_a_previous_token_head_over_0_4(circuit):
    layer, source = circuit["source"]
    assert circuit["previous"][layer, source] >= 0.4


@pytest.mark.slow
def test_one_layer_grows_none(runs):
    _, s = scores(runs["1l"])
    print("1-layer induction scores", s.scores["induction"].tolist())
    assert s.scores["induction"].max() <= 0.1


@pytest.mark.slow
def test_scores_over_checkpoints_show_the_phase_change(runs):
    analyze(runs["2l"], "all", only=["head_scores/repeated"], settings=Settings(n_repeated=30), progress=False)
    traj = load_result(RunDir(runs["2l"]), "analysis/trajectory")
    steps, series = traj.steps, traj.scalars["head_scores/repeated/induction.max"]
    print(list(zip(steps, [round(v, 3) for v in series])))
    assert series[0] < 0.1 and series[-1] >= 0.4
    # A phase change, not a drift: the score crosses from 0.1 to 0.4 within a quarter of training.
    up = next(s for s, v in zip(steps, series) if v >= 0.1)
    done = next(s for s, v in zip(steps, series) if v >= 0.4)
    assert done - up <= steps[-1] / 4
