"""The Development section: built from a tiny run's refined LLC per head, essential dynamics,
stages and head scores over training; stage boundaries marked on every chart over steps; and one
sentence, not an error, for each part a run lacks."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from toylens.analysis import analyze
from toylens.development import development
from toylens.llc import LLCSettings, llc_over_checkpoints
from toylens.report import build_sections, report
from toylens.report.collect import collect_runs
from toylens.report.figures import LineFigure
from toylens.rundir import RunDir
from toylens.train import train

FAST = LLCSettings(epsilon=1e-4, gamma=100.0, chains=1, draws=4, burnin=2, init_batches=1, mala_every=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = tiny_config(model={"n_layers": 2, "attn_only": True}, train={"epochs": 3, "log_checkpoints": 3})
    path = train(cfg, tmp_path_factory.mktemp("devreport"), progress=False).run_dir
    analyze(path, "all", only=["head_scores/repeated"], device="cpu", progress=False)
    return RunDir(path)


def _sections(path):
    from toylens.report import READERS

    return {s.id: s for s in build_sections(collect_runs([path], READERS))}


def test_without_development_results_there_is_no_section(run):
    assert "development" not in _sections(run.path)


def test_development_section_has_every_part_and_marks_the_stages(run, tmp_path):
    llc_over_checkpoints(run, "all", settings=FAST, device="cpu", progress=False)
    llc_over_checkpoints(run, "all", restrict="heads", settings=FAST, device="cpu", progress=False)
    _, stages = development(run, n_probe=8, device="cpu")
    sections = _sections(run.path)
    dev = sections["development"]
    ids = [b.id for b in dev.blocks]
    assert [i for i in ids if i.startswith("head-llc-")] == [
        f"head-llc-l{layer}h{h}" for layer in (0, 1) for h in (0, 1)
    ]
    assert {"essential-dynamics", "essential-dynamics-pc1", "essential-dynamics-variance"} <= set(ids)
    assert {"development-induction", "development-previous_token", "stages-probe-loss", "stages-llc"} <= set(ids)
    assert dev.note == ""
    head = next(b for b in dev.blocks if b.id == "head-llc-l1h0")
    assert len(head.series[0].x) == len(run.checkpoints())  # one λ̂ per checkpoint
    last = max(c.step for c in run.checkpoints())
    assert head.x_range == [0, last]  # one time axis for the section's charts over steps
    # Every chart over steps in the whole report carries the boundaries; others carry none.
    marked = {m.x for m in head.marks}
    assert stages.boundaries and marked == {b["step"] for b in stages.boundaries}
    for section in sections.values():
        for b in section.blocks:
            if isinstance(b, LineFigure):
                assert bool(b.marks) == (b.x_label == "step"), b.id
    out = report(run.path, tmp_path / "r.html", png=False)
    assert "development" in out.sections
    html = out.path.read_text()
    assert "Refined LLC of L1H0" in html and "Essential dynamics" in html and '"marks"' in html


def test_a_missing_part_is_one_sentence(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    for head in ("l0h0", "l0h1", "l1h0", "l1h1"):
        shutil.rmtree(copy / "llc" / head)
    manifest = RunDir(copy).manifest()
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(("llc/l0h", "llc/l1h"))}
    import json

    (copy / "manifest.json").write_text(json.dumps(manifest))
    dev = _sections(copy)["development"]
    assert not [b for b in dev.blocks if b.id.startswith("head-llc-")]
    assert (
        dev.note == "No per-head refined LLC: run `toylens llc RUN --restrict heads` (after `toylens llc calibrate`)."
    )


def test_heads_rank_by_the_rise_of_their_refined_llc_across_a_step():
    from toylens.report.development import head_rises

    def curve(*values):
        return [{"step": s, "checkpoint": f"c{s}", "llc": v} for s, v in zip((0, 100, 200, 300), values)]

    restricted = {
        "l0h0": curve(0.1, 0.2, 0.4, 0.5),  # 2x across step 200
        "l1h0": curve(0.1, 0.1, 0.6, 0.7),  # 6x
        "l1h1": curve(0.1, -0.1, 0.3, 0.3),  # negative before: no ratio, ranked last
        "all@copied": curve(1, 1, 9, 9),  # not a head
    }
    ranked = head_rises(restricted, 200)
    assert [h.head for h in ranked] == ["l1h0", "l0h0", "l1h1"]
    assert ranked[0].rise == pytest.approx(6.0) and ranked[1].rise == pytest.approx(2.0) and ranked[2].rise is None
    assert ranked[0].before["step"] == 100 and ranked[0].after["step"] == 200
    assert head_rises(restricted, 0) == []  # no estimate before step 0


def test_heads_cluster_by_their_curves_at_the_checkpoints_all_share():
    from toylens.report.development import head_clusters

    def curve(values, at=(0, 100, 200)):
        return [{"step": s, "checkpoint": f"c{s}", "llc": v} for s, v in zip(at, values)]

    restricted = {
        "l0h0": curve([0.1, 1.8, 2.0]),
        "l0h1": curve([0.1, 2.1, 2.5, 9.0], at=(0, 100, 200, 300)),  # c300: not every head has it
        "l1h0": curve([0.1, 0.5, 0.5]),
        "l1h1": curve([0.1, 0.4, None]),  # no estimate at c200: c0 and c100 are shared
        "all@copied": curve([5.0, 5.0, 5.0]),  # not a head
    }
    assert head_clusters(restricted) == {"l0h0": 0, "l0h1": 0, "l1h0": 1, "l1h1": 1}
    assert head_clusters({"l0h0": curve([1.0, 2.0, 3.0])}) == {}
