"""Report sections from saved analysis results: what they show equals what `analyze` saved, they
appear only for runs that have the results, and architectures without a result leave it out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_runs import make_run
from test_report import figure_data, section_ids

import toylens
from toylens.analysis.driver import analyze
from toylens.errors import ToylensError
from toylens.report.figures import round_sig
from toylens.rundir import RunDir, resolve_one
from toylens.rundir.results import load_result

ANALYSIS_SECTIONS = [
    "head-scores",
    "attention",
    "circuits",
    "attribution",
    "patching",
    "ablation",
    "analysis-over-training",
]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("analysed")
    runs = {
        "mlp": make_run(out, "mlp", train={"epochs": 2}),
        "attn2": make_run(
            out, "attn2", model={"n_layers": 2, "attn_only": True, "normalization": "LN"}, train={"epochs": 1}
        ),
        "plain": make_run(out, "plain", train={"epochs": 1}),
    }
    analyze(runs["mlp"], "all", progress=False)
    analyze(runs["attn2"], "all", progress=False)
    return runs


@pytest.fixture(scope="module")
def page(analysed, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("page") / "r.html"
    toylens.report([analysed["mlp"], analysed["attn2"]], path, png=False)
    return path.read_text()


def result(run: Path, rel: str, checkpoint: str | None = None):
    """A saved result of `checkpoint`, by default of the final checkpoint (where analyze stores "final")."""
    name = checkpoint or resolve_one(RunDir(run), "final").name
    return load_result(RunDir(run), f"analysis/{name}/{rel}")


def rounded(rows) -> list:
    return [[round_sig(float(v)) for v in row] for row in rows]


def test_sections_follow_the_results(page):
    ids = section_ids(page)
    for section in ANALYSIS_SECTIONS + ["composition", "sparsity"]:
        assert section in ids
    # Each architecture-specific section says which run lacks it instead of drawing an empty panel.
    composition = page[page.index('<section id="sec-composition"') :]
    assert re.search(r'<p class="note">No composition scores[^<]*: mlp\.</p>', composition[:2000])
    sparsity = page[page.index('<section id="sec-sparsity"') :]
    assert re.search(r'<p class="note">No MLP sparsity[^<]*: attn2\.</p>', sparsity[:2000])
    figures = figure_data(page)
    assert [p["title"] for p in figures["composition-k"]["panels"]][0].startswith("attn2")
    assert len(figures["composition-k"]["panels"]) == 1


def test_runs_without_analysis_have_no_analysis_sections(analysed, tmp_path):
    alone = toylens.report([analysed["plain"]], tmp_path / "plain.html", png=False)
    assert not set(alone.sections) & set(ANALYSIS_SECTIONS + ["composition", "sparsity"])
    mixed = toylens.report([analysed["plain"], analysed["mlp"]], tmp_path / "mixed.html", png=False)
    assert set(ANALYSIS_SECTIONS) <= set(mixed.sections)
    text = mixed.path.read_text()
    circuits = text[text.index('<section id="sec-circuits"') :]
    assert '<p class="note">No circuits for: plain.</p>' in circuits[:2000]


def test_circuit_heatmaps_equal_the_saved_circuits(analysed, page):
    figures = figure_data(page)
    saved = result(analysed["attn2"], "circuits")
    panels = {p["title"]: p for p in figures["circuit-ov_tokens"]["panels"]}
    panel = panels["attn2 L1H0"]
    assert panel["z"] == rounded(saved.ov_tokens[1, 0].tolist())
    assert panel["y_labels"] == [str(t) for t in saved.token_labels][: saved.ov_tokens.shape[2]]
    assert panel["x_labels"] == [str(t) for t in saved.out_labels][: saved.ov_tokens.shape[3]]
    qk = {p["title"]: p for p in figures["circuit-qk_positions"]["panels"]}["mlp L0H1"]
    assert qk["z"] == rounded(result(analysed["mlp"], "circuits").qk_positions[0, 1].tolist())


def test_composition_panel_is_layer1_reading_layer0(analysed, page):
    comp = result(analysed["attn2"], "composition")
    panel = figure_data(page)["composition-k"]["panels"][0]
    assert panel["y_labels"] == ["L1H0", "L1H1"] and panel["x_labels"] == ["L0H0", "L0H1"]
    expected = [[comp.k[0, sender, 1, receiver].item() for sender in range(2)] for receiver in range(2)]
    assert panel["z"] == rounded(expected)


def test_patching_grids_equal_the_saved_grids(analysed, page):
    figures = figure_data(page)
    grid = result(analysed["mlp"], "patching/logit_diff/head_out_by_pos")  # [layer, pos, head]
    panel = figures["patching-logit_diff-head_out_by_pos"]["panels"][0]
    assert panel["y_labels"] == ["L0H0", "L0H1"]
    assert panel["z"] == rounded(grid.normalized.permute(0, 2, 1).reshape(2, -1).tolist())
    assert panel["x_labels"] == grid.labels["pos"]


def test_head_scores_over_training_equal_each_checkpoint(analysed, page):
    series = {s["name"]: s for s in figure_data(page)["head_scores-task-previous_token"]["series"]}
    line = series["attn2 L1H1"]
    checkpoints = [c for c in RunDir(analysed["attn2"]).checkpoints()]
    assert line["x"] == [c.step for c in checkpoints]
    assert line["y"] == [
        round_sig(result(analysed["attn2"], "head_scores/task", c.name).scores["previous_token"][1, 1].item())
        for c in checkpoints
    ]


def test_attention_viewer_holds_the_saved_patterns(analysed, page):
    viewer = figure_data(page)["attention-viewer"]
    runs = [(r["label"], r["checkpoint"]) for r in viewer["runs"]]
    assert ("mlp", "epoch-0002, step 20") in runs and ("attn2", "epoch-0000, step 0") in runs
    last = [r for r in viewer["runs"] if r["label"] == "attn2"][-1]
    saved = result(analysed["attn2"], "attention/task", "epoch-0001")
    example = last["examples"][0]
    assert example["source"] == "task #0" and example["tokens"] == saved.labels[0]
    assert example["patterns"] == [
        [[[round(v, 3) for v in row] for row in head] for head in layer] for layer in saved.patterns[0].tolist()
    ]
    assert {e["source"].split()[0] for e in last["examples"]} == {"task", "repeated"}


def test_ablation_and_attribution_tables(analysed, page):
    mean = result(analysed["mlp"], "ablation/mean")
    row = re.search(r"<tr><td>mlp L0H1</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert row and float(row.group(2)) == pytest.approx(mean.heads[0, 1].item(), rel=1e-3, abs=1e-6)
    dla = result(analysed["mlp"], "logit_attribution")
    assert f"<td>{dla.labels[0]}</td>" in page


def test_summary_shows_sparsity_of_the_analysed_checkpoint(analysed, page):
    sparsity = result(analysed["mlp"], "sparsity")
    row = re.search(r"<tr><td>MLP 0: fraction of neurons active</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert row and float(row.group(1)) == pytest.approx(sparsity.fraction_active[0].item(), rel=1e-3)
    assert row.group(2) == "—"  # the attention-only run has no MLP


def test_checkpoint_picks_the_checkpoint_shown_in_full(analysed, tmp_path):
    """report --checkpoint: every run's focus is the checkpoint the spec names; curves keep every checkpoint."""
    first = toylens.report([analysed["mlp"], analysed["attn2"]], tmp_path / "first.html", png=False, checkpoint=0)
    text = first.path.read_text()
    assert "<td>epoch-0000 (step 0)</td><td>epoch-0000 (step 0)</td>" in text  # the summary's "analysed checkpoint" row
    panel = {p["title"]: p for p in figure_data(text)["circuit-qk_positions"]["panels"]}["mlp L0H1"]
    assert panel["z"] == rounded(result(analysed["mlp"], "circuits", "epoch-0000").qk_positions[0, 1].tolist())
    series = {s["name"]: s for s in figure_data(text)["head_scores-task-previous_token"]["series"]}
    assert len(series["mlp L0H0"]["x"]) == 3  # still every analysed checkpoint
    default = toylens.report([analysed["mlp"]], tmp_path / "default.html", png=False).path.read_text()
    final = toylens.report([analysed["mlp"]], tmp_path / "final.html", png=False, checkpoint="final").path.read_text()
    assert "<td>epoch-0002 (step 20)</td>" in default and "<td>epoch-0002 (step 20)</td>" in final


def test_checkpoint_that_was_not_analysed_is_refused(analysed, tmp_path):
    import shutil

    partly = shutil.copytree(analysed["plain"], tmp_path / "plain")
    analyze(partly, "final", only=["weight_norms"], progress=False)
    with pytest.raises(ToylensError, match=r"checkpoint epoch-0000 has no analysis results \(analysed: epoch-0001\)"):
        toylens.report([partly], tmp_path / "r.html", png=False, checkpoint=0)
    with pytest.raises(ToylensError, match="report takes one checkpoint"):
        toylens.report([analysed["plain"]], tmp_path / "r.html", png=False, checkpoint="all")
