"""`toylens analyze` end to end on tiny trained runs: every result saved, loadable, skipped when done."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from typer.testing import CliRunner

from toylens.analysis import ANALYSES, Settings, analyze, load_result
from toylens.cli import app
from toylens.errors import ToylensError
from toylens.rundir import RunDir
from toylens.rundir.results import RESULT_TYPES
from toylens.train import train

SMALL = Settings(n_examples=24, n_patch=6, n_repeated=8, n_pattern_examples=2)
FINAL = "epoch-0002"  # the final checkpoint of the two-epoch tiny runs: results of "final" are stored under it


@pytest.fixture(scope="module")
def runs(tmp_path_factory, device):
    out = tmp_path_factory.mktemp("runs")
    mlp = train(tiny_config(name="mlp"), out, progress=False, device=device).run_dir
    attn = train(
        tiny_config(name="attn2", model={"n_layers": 2, "attn_only": True, "normalization": "LN"}),
        out,
        progress=False,
        device=device,
    ).run_dir
    return mlp, attn


def test_every_analysis_saved_and_loadable(runs, device):
    mlp, _ = runs
    written = analyze(mlp, "final", settings=SMALL, progress=False, device=device)
    run = RunDir(mlp)
    names = {a.name.format(metric="logit_diff") for a in ANALYSES} - {
        "composition",  # one layer: nothing to compose
        "text_heads/attention",  # sorting is no text task
        "text_heads/skip_trigrams",
    }
    assert {w.removeprefix(f"analysis/{FINAL}/") for w in written} == names
    for name in names:
        result = load_result(run, f"analysis/{FINAL}/{name}")
        doc = run.read_json(f"analysis/{FINAL}/{name}.json")
        assert doc["type"] == type(result).__name__ in RESULT_TYPES
        for array, info in doc["arrays"].items():
            assert len(info["axes"]) == len(info["shape"]), (name, array)
    grid = load_result(run, f"analysis/{FINAL}/patching/logit_diff/head_out_by_pos")
    assert grid.values.shape == (1, 8, 2) and grid.grid_axes == ["layer", "pos", "head"]
    assert len(grid.labels["pos"]) == 8 and grid.labels["pos"][4] == "SEP"
    summary = load_result(run, f"analysis/{FINAL}/summary")
    assert summary.epoch == 2 and summary.step > 0 and "circuits" in summary.results
    assert "head_scores/repeated/induction.max" in summary.scalars
    assert analyze(mlp, "final", settings=SMALL, progress=False, device=device) == []  # all done: skipped


def test_neuron_ablations_can_be_left_out(tmp_path):
    """ablate_neurons=False (the text studies' quick size) keeps the head ablations, drops the neurons."""
    import shutil

    fresh = train(tiny_config(name="mlp"), tmp_path / "a", progress=False).run_dir  # no analysis yet
    results = {}
    for neurons in (False, True):
        run = shutil.copytree(fresh, tmp_path / f"mlp-{neurons}")
        analyze(
            run,
            "final",
            only=["ablation/mean"],
            settings=Settings(n_examples=24, ablate_neurons=neurons),
            progress=False,
        )
        results[neurons] = load_result(RunDir(run), f"analysis/{FINAL}/ablation/mean")
    assert results[False].neurons.shape == (1, 0) and results[True].neurons.shape == (1, 32)
    assert torch.allclose(results[False].heads, results[True].heads)


def test_all_checkpoints_and_trajectory(runs, device):
    _, attn = runs
    written = analyze(
        attn, "all", only=["head_scores/repeated", "composition"], settings=SMALL, progress=False, device=device
    )
    assert len(written) == 2 * 3  # epochs 0, 1, 2; the final checkpoint is epoch 2, analysed once
    traj = load_result(RunDir(attn), "analysis/trajectory")
    assert traj.checkpoints == ["epoch-0000", "epoch-0001", FINAL]
    assert traj.steps == sorted(traj.steps)
    series = traj.scalars["head_scores/repeated/induction.max"]
    assert len(series) == 3 and all(isinstance(v, float) for v in series)
    k_max = traj.scalars["composition/k.max"]
    assert all(isinstance(v, float) and 0 < v < 1 for v in k_max) and traj.scalars["composition/k.argmax"][
        -1
    ].startswith("L1")
    comp = load_result(RunDir(attn), f"analysis/{FINAL}/composition")
    assert comp.k.shape == (2, 2, 2, 2) and comp.k[0, :, 1].isfinite().all() and comp.k[1].isnan().all()


def test_attribution_patching_lies_beside_exact_patching(runs, device):
    """`--only atp` writes every attribution grid that applies (no MLP grids without MLPs), each
    laid out as the exact grid of the same name; with the accuracy metric (no gradient) none."""
    _, attn = runs
    written = analyze(
        attn, "final", only=["atp", "patching/logit_diff/head_out"], settings=SMALL, progress=False, device=device
    )
    base = f"analysis/{FINAL}"
    atp = {w.removeprefix(f"{base}/atp/logit_diff/") for w in written if "/atp/" in w}
    assert atp == {a.name.rsplit("/", 1)[-1] for a in ANALYSES if a.name.startswith("atp/")} - {"mlp_out", "neurons"}
    run = RunDir(attn)
    exact = load_result(run, f"{base}/patching/logit_diff/head_out")
    estimate = load_result(run, f"{base}/atp/logit_diff/head_out")
    assert type(estimate).__name__ == "AttributionGrid" and estimate.method == "atp"
    assert estimate.values.shape == exact.values.shape == (2, 2)
    assert (estimate.grid_axes, estimate.labels) == (exact.grid_axes, exact.labels)
    assert (estimate.clean, estimate.corrupted, estimate.metric) == (exact.clean, exact.corrupted, exact.metric)
    accuracy = Settings(n_examples=24, n_patch=6, patch_metric="accuracy")
    assert analyze(attn, "final", only=["atp"], settings=accuracy, progress=False, device=device) == []


def test_edge_attribution_and_faithfulness_saved(runs, device):
    _, attn = runs
    written = analyze(attn, "final", only=["eap"], settings=SMALL, progress=False, device=device)
    base = f"analysis/{FINAL}/eap/logit_diff"
    assert sorted(written) == [f"{base}/{n}" for n in ("edges", "edges_ig", "faithfulness")]
    run = RunDir(attn)
    edges, ig = load_result(run, f"{base}/edges"), load_result(run, f"{base}/edges_ig")
    assert edges.scores.shape == ig.scores.shape == (1 + 4, 2 * 6 + 1)  # embed + 2x2 heads; 2x2 heads' q, k, v + logits
    assert (edges.ig_steps, ig.ig_steps) == (1, 5) and edges.readers[-1] == "logits"
    faithful = load_result(run, f"{base}/faithfulness")
    assert faithful.total_edges == int(edges.scores.isfinite().sum()) and faithful.sizes[-1] == faithful.total_edges
    # the circuit: the first size tried that recovers 80% of the gap (or every edge)
    reached = [n for n, r in zip(faithful.sizes, faithful.curve) if r >= 0.8]
    assert faithful.target == 0.8 and faithful.n_edges == (reached[0] if reached else faithful.total_edges)
    assert faithful.circuit.shape == edges.scores.shape


def test_path_patching_saved_beside_the_edge_scores(runs, device):
    """`--only path_patching` writes the exact direct path grid, in EdgeScores's layout."""
    _, attn = runs
    only = ["path_patching", "eap/logit_diff/edges"]
    written = analyze(attn, "final", only=only, settings=SMALL, progress=False, device=device)
    base = f"analysis/{FINAL}"
    assert f"{base}/path_patching/logit_diff/direct" in written  # (the edges may be written already)
    run = RunDir(attn)
    paths, edges = (
        load_result(run, f"{base}/path_patching/logit_diff/direct"),
        load_result(run, f"{base}/eap/logit_diff/edges"),
    )
    assert (paths.senders, paths.receivers) == (edges.writers, edges.readers)
    assert paths.values.isnan().equal(edges.scores.isnan()) and paths.values.shape == (5, 13)
    assert (paths.clean, paths.corrupted) == pytest.approx((edges.clean, edges.corrupted), rel=1e-5)


def test_tampered_result_is_refused(runs, device):
    _, attn = runs
    analyze(attn, "final", only=["weight_norms"], settings=SMALL, progress=False, device=device)
    path = attn / f"analysis/{FINAL}/weight_norms.json"
    path.write_text(path.read_text().replace("total_matrices", "total_matrixes"))
    with pytest.raises(ToylensError, match="SHA-256"):
        load_result(RunDir(attn), f"analysis/{FINAL}/weight_norms")


def test_bad_requests_are_one_line_errors(runs, tmp_path, device):
    mlp, _ = runs
    with pytest.raises(ToylensError, match="no such analysis"):
        analyze(mlp, "final", only=["nope"], progress=False, device=device)
    with pytest.raises(ToylensError, match="no checkpoint 'epoch-0099'"):
        analyze(mlp, 99, progress=False, device=device)
    with pytest.raises(ToylensError, match="not found"):
        analyze(tmp_path / "missing", progress=False, device=device)


def test_cli_analyze_and_export(runs, device):
    mlp, _ = runs
    run = lambda *a: CliRunner().invoke(app, list(a))  # noqa: E731  (in-process: no interpreter start-up)
    proc = run("analyze", str(mlp), "--checkpoint", "1", "--only", "attention", "--no-progress", "--examples", "8")
    assert proc.exit_code == 0, proc.output
    assert RunDir(mlp).has("analysis/epoch-0001/attention/task.json")
    heads = run(
        "analyze",
        str(mlp),
        "--checkpoint",
        "1",
        "--only",
        "ablation/zero",
        "--no-progress",
        "--examples",
        "8",
        "--no-neuron-ablations",
    )
    assert heads.exit_code == 0, heads.output
    assert load_result(RunDir(mlp), "analysis/epoch-0001/ablation/zero").neurons.shape == (1, 0)
    bad = run("analyze", str(mlp), "--metric", "vibes", "--only", "patching", "--no-progress")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "patch metric" in bad.stderr
    exp = run("export", str(mlp), "--to", "transformer-lens")
    assert exp.exit_code == 0, exp.output
    path = mlp / f"export/transformer-lens/{FINAL}.safetensors"
    from toylens import load
    from toylens.export import load_transformer_lens

    tl = load_transformer_lens(path)
    model = load(mlp).model
    tokens = torch.randint(0, 11, (3, 8))
    with torch.no_grad():
        assert (tl(tokens).log_softmax(-1) - model(tokens).log_softmax(-1)).abs().max() <= 1e-5
    assert json.loads((mlp / "manifest.json").read_text())["files"][f"export/transformer-lens/{FINAL}.safetensors"]
    assert run("export", str(mlp), "--to", "onnx").exit_code == 2
