"""Known circuits recovered by edge attribution on configs/induction-2l.yaml (trained here, shared
with the other slow tests): issue 16's acceptance, as far as it holds (BENCHMARKS.md, "Known
circuits").

The model grows four layer-1 induction heads that all K-compose with two layer-0 previous-token
heads, so the circuit is spread over ~18 of the graph's 81 edges. Measured as `toylens analyze`
does (the task's 32 corrupted pairs, neg_loss, EAP-IG with 5 steps), the previous-token ->
induction-key edges are the strongest edges between heads, the strongest previous-token head's
first into every induction key, and the top quarter of the edges recovers >= 80% of the gap.
What does not hold, and is not asserted: those edges in the top 5 of all edges (the two
embed -> previous-token-head value edges and the four induction-head -> logits edges, which every
path goes through, rank above them, exact edge ablation agreeing), and >= 80% from 10% (8 edges):
with only two of the four induction heads reaching the logits, even all 79 other edges recover
under 60%.
"""

from __future__ import annotations

import pytest

from toylens import load
from toylens.analysis import repeated_token_scores
from toylens.analysis.edge_attribution import circuit, edge_attribution, faithfulness
from toylens.analysis.graph import edge_mask
from toylens.analysis.metrics import make_metric

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def induction(induction_2l):
    """The model, its pair and metric, EAP-IG scores, and its heads: the layer-1 induction heads
    and the layer-0 previous-token heads (scores >= 0.4), the strongest previous-token head first."""
    run = load(induction_2l, device="cpu")
    model, task = run.model, run.task
    s = repeated_token_scores(model, task.random_token_ids(), task.bos_token(), n_seq=100, half=50)
    previous, induction = s.scores["previous_token"][0], s.scores["induction"][1]
    pair = task.corrupted_pair(32, 0)
    metric = make_metric(task.patch_metric, pair.answers, pair.wrong)
    edges = edge_attribution(model, pair.clean, pair.corrupted, metric, ig_steps=5)
    print(f"previous-token {previous.tolist()}, induction {induction.tolist()}, gap {edges.clean} / {edges.corrupted}")
    return dict(
        model=model,
        pair=pair,
        metric=metric,
        edges=edges,
        previous=[f"L0H{h}" for h in previous.argsort(descending=True).tolist() if previous[h] >= 0.4],
        induction=[f"L1H{h}" for h in range(len(induction)) if induction[h] >= 0.4],
    )


def test_previous_token_to_induction_key_edges_are_the_strongest_between_heads(induction):
    edges, previous, heads = induction["edges"], induction["previous"], induction["induction"]
    assert len(previous) >= 1 and len(heads) >= 1
    score = edges.scores.nan_to_num(0).abs()
    order = score.flatten().argsort(descending=True).tolist()
    rank = {
        (edges.writers[i // len(edges.readers)], edges.readers[i % len(edges.readers)]): n + 1
        for n, i in enumerate(order)
    }
    print("ranks of all edges:", {f"{previous[0]}->{h}.k": rank[previous[0], f"{h}.k"] for h in heads})
    print("top 8:", edges.top_edges(8))
    layer0 = [w for w in edges.writers if w.startswith("L0")]
    for head in heads:  # into every induction head's key, the strongest previous-token head writes most
        into = {w: float(score[edges.writers.index(w), edges.readers.index(f"{head}.k")]) for w in layer0}
        assert max(into, key=into.__getitem__) == previous[0], (head, into)
    between = sorted(((w, r) for w, r in rank if w.startswith("L") and r.startswith("L")), key=rank.__getitem__)
    k_composition = {(p, f"{h}.k") for p in previous for h in heads}
    assert set(between[: len(k_composition)]) == k_composition
    assert set(between[: len(heads)]) == {(previous[0], f"{h}.k") for h in heads}


def test_a_quarter_of_the_edges_recovers_80_percent_of_the_gap(induction):
    model, pair, metric, edges = induction["model"], induction["pair"], induction["metric"], induction["edges"]
    total = int(edge_mask(model).sum())
    recovered = {}
    for fraction in (0.1, 0.25):
        n = round(fraction * total)
        recovered[n] = faithfulness(model, pair.clean, pair.corrupted, metric, circuit(edges, top=n)).recovered
    print(f"{total} edges; recovered by the top n: {recovered}")
    assert recovered[round(0.25 * total)] >= 0.8
    assert recovered[round(0.1 * total)] < 0.8  # the 10%: see the module docstring


def test_the_edge_scores_rise_across_the_phase_change(induction_2l, induction):
    """The gap the induction heads close opens between steps 1,128 and 1,471 (neg_loss on the pairs
    from -3.57 to -0.97): the strongest previous-token head's edge into each induction key scores
    at least 5x more at the end than at step 988, just before (measured: over 100x)."""
    before = load(induction_2l, "step-000988", device="cpu").model
    pair, metric, after = induction["pair"], induction["metric"], induction["edges"]
    early = edge_attribution(before, pair.clean, pair.corrupted, metric, ig_steps=5)
    for head in induction["induction"]:
        w, r = after.writers.index(induction["previous"][0]), after.readers.index(f"{head}.k")
        was, now = float(early.scores[w, r]), float(after.scores[w, r])
        print(f"{induction['previous'][0]} -> {head}.k: {was:.4g} -> {now:.4g}")
        assert now >= 5 * abs(was)
