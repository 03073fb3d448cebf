"""The Circuits section: the extracted circuit as inline SVG (one curve per saved circuit edge),
its faithfulness, AtP beside exact patching, and the strongest edges over training (trajectory)."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pytest
import torch
from report_runs import make_run
from test_report import figure_data, section_ids

import toylens
from toylens.analysis.driver import Settings, analyze
from toylens.analysis.summary import TOP_EDGES, edge_key
from toylens.report.circuit_graph import spearman
from toylens.report.figures import CircuitGraph, GraphEdge, GraphNode
from toylens.report.svg import graph_html
from toylens.rundir import RunDir
from toylens.rundir.results import load_result

FINAL = "epoch-0002"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("circuits")
    attn2 = make_run(out, "attn2", model={"n_layers": 2, "attn_only": True, "normalization": "LN"}, train={"epochs": 2})
    analyze(attn2, "all", only=["eap", "atp", "patching"], settings=Settings(n_patch=6), progress=False)
    plain = make_run(out, "plain", train={"epochs": 1})
    analyze(plain, "final", only=["patching/logit_diff/head_out"], settings=Settings(n_patch=6), progress=False)
    return {"attn2": attn2, "plain": plain}


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("page") / "r.html"
    toylens.report([runs["attn2"], runs["plain"]], path, png=False)
    return path.read_text()


def saved(run: Path, rel: str, checkpoint: str = FINAL):
    return load_result(RunDir(run), f"analysis/{checkpoint}/{rel}")


def section(page: str) -> str:
    start = page.index('<section id="sec-edge-circuits"')
    return page[start : page.index("</section>", start)]


def test_circuit_graph_has_one_curve_per_circuit_edge(runs, page):
    assert "edge-circuits" in section_ids(page)
    text = section(page)
    svg = re.search(r'<svg class="circuit-graph".*?</svg>', text, re.S)
    assert svg is not None
    faith = saved(runs["attn2"], "eap/logit_diff/faithfulness")
    assert svg.group(0).count('<path class="edge"') == int(faith.circuit.sum()) > 0
    # Every circuit edge's title names its writer, reader input and EAP-IG score.
    edges = saved(runs["attn2"], "eap/logit_diff/edges_ig")
    titles = re.findall(r'<path class="edge"[^>]*><title>([^<]*)</title>', svg.group(0))
    for w, r in faith.circuit.nonzero().tolist():
        assert any(html.unescape(t).startswith(f"{edges.writers[w]} → {edges.readers[r]}: ") for t in titles)
    # q/k/v ports are labelled under each head; nodes from embed to logits.
    assert svg.group(0).count('class="port"') == 3 * 4
    assert ">embed</text>" in svg.group(0) and ">logits</text>" in svg.group(0)


def test_faithfulness_beside_the_graph_equals_the_saved_one(runs, page):
    faith = saved(runs["attn2"], "eap/logit_diff/faithfulness")
    facts = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", section(page)))
    assert float(facts["recovered fraction of the gap"]) == pytest.approx(faith.recovered, rel=1e-3)
    assert facts["edges kept"] == f"{faith.n_edges} of {faith.total_edges}"
    assert facts["circuit"] == "the fewest strongest edges recovering 80% of the gap"
    curve = dict(item.split(": ") for item in facts["recovered by the strongest n edges"].split(", "))
    assert [int(n) for n in curve] == faith.sizes and [float(r) for r in curve.values()] == pytest.approx(
        faith.curve, abs=0.005
    )
    assert facts["ablation outside the circuit"] == faith.ablation == "corrupted"
    # the empty circuit under the corrupted ablation is the corrupted run
    assert float(facts["metric with no edge kept (0 recovered)"]) == pytest.approx(faith.ablated, rel=1e-3)
    assert faith.ablated == pytest.approx(faith.corrupted, rel=1e-5, abs=1e-6)


def test_atp_beside_exact_on_one_scale(runs, page):
    figures = figure_data(page)
    fig = figures["atp-0-logit_diff-head_out"]
    exact, atp = saved(runs["attn2"], "patching/logit_diff/head_out"), saved(runs["attn2"], "atp/logit_diff/head_out")
    assert [p["title"].split(":")[0] for p in fig["panels"]] == ["exact", "AtP"]
    assert fig["panels"][1]["z"] == [
        [pytest.approx(v, rel=1e-3, abs=1e-6) for v in row] for row in atp.normalized.tolist()
    ]
    assert fig["zmin"] == -fig["zmax"]  # one diverging scale for both panels
    rho = spearman(exact.normalized, atp.normalized)
    assert f"Spearman {rho:.3g}" in fig["title"]
    # The run with exact patching only has no pair, and the section says it has no edge scores.
    assert not any(k.startswith("atp-1-") for k in figures)
    assert '<p class="note">No edge attribution (toylens analyze RUN --only eap) for: plain.</p>' in section(page)


def test_trajectory_follows_the_strongest_edges_at_every_checkpoint(runs, page):
    run = RunDir(runs["attn2"])
    t = load_result(run, "analysis/trajectory")
    assert t.checkpoints == ["epoch-0000", "epoch-0001", FINAL]
    last = saved(runs["attn2"], "eap/logit_diff/edges_ig")
    for writer, reader, _ in last.top_edges(TOP_EDGES):
        values = t.scalars[edge_key("eap/logit_diff/edges_ig", writer, reader)]
        for checkpoint, value in zip(t.checkpoints, values):
            e = saved(runs["attn2"], "eap/logit_diff/edges_ig", checkpoint)
            assert value == pytest.approx(float(e.scores[e.writers.index(writer), e.readers.index(reader)]))
    assert sum("edges_ig/" in k and "->" in k for k in t.scalars) == TOP_EDGES
    lines = figure_data(page)["edges-over-training-0-eap-logit_diff-edges_ig"]
    assert len(lines["series"]) == TOP_EDGES and all(len(s["x"]) == 3 for s in lines["series"])


def test_labels_are_escaped():
    nasty = '<script>x</script>&"'
    graph = CircuitGraph(
        "g",
        nasty,
        [GraphNode("a", nasty, 0, 0), GraphNode("b", "b", 1, 0, ["q"])],
        [GraphEdge("a", "b", "q", 1.0)],
        [nasty, "row"],
        facts=[[nasty, nasty]],
        guide=nasty,
    )
    out = graph_html(graph)
    # title, aria-label, guide, row label, the node's title and text, both facts cells
    assert "<script>" not in out and out.count("&lt;script&gt;x&lt;/script&gt;&amp;&quot;") == 8
    assert out.count('<path class="edge"') == 1


def test_spearman_against_a_known_value():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1)
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1)
    assert spearman(torch.tensor([1.0, 2, 3, float("nan")]), torch.tensor([1.0, 3, 2, 0])) == pytest.approx(0.5)
    assert math.isnan(spearman(torch.tensor([1.0]), torch.tensor([1.0])))


def test_every_circuits_figure_is_a_png(runs, tmp_path):
    result = toylens.report([runs["attn2"]], tmp_path / "r.html")
    names = {p.stem for p in result.pngs}
    for name in (
        "circuit-graph-0-logit_diff",
        "atp-0-logit_diff-head_out",
        "edges-over-training-0-eap-logit_diff-edges_ig",
    ):
        assert name in names
        assert (tmp_path / "r_figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
