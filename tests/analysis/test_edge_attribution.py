"""Edge attribution (EAP, EAP-IG): a writer's edges add up to its node AtP estimate, the scores
equal TransformerLens 4.3's edge attribution on the exported model, and EAP-IG converges to a
float64 brute-force integrated gradient (one forward and backward per step, written here)."""

from __future__ import annotations

import pytest
import torch
from conftest import patch_pair, tiny_model

from toylens.analysis.attribution_patching import AttributionPatcher
from toylens.analysis.edge_attribution import circuit, edge_attribution, faithfulness, smallest_circuit
from toylens.analysis.graph import edge_mask
from toylens.analysis.metrics import LogitDiff


def pair(seed=0, batch=5, pos=8, same_answers=False):
    clean, corrupted, correct, wrong = patch_pair(seed, batch, pos, same_answers)
    return clean, corrupted, LogitDiff(correct, wrong)


@pytest.mark.parametrize("attn_only,norm", [(True, "none"), (False, "LN")])
def test_a_writers_edges_add_up_to_its_node_estimate(attn_only, norm):
    model = tiny_model(n_layers=2, attn_only=attn_only, normalization=norm).double()
    clean, corrupted, metric = pair()
    eap = edge_attribution(model, clean, corrupted, metric)
    assert eap.scores.isnan().equal(~edge_mask(model))
    total = eap.scores.nan_to_num(0).sum(1)  # [writer]
    atp = AttributionPatcher(model, clean, corrupted, metric)
    heads = atp.head_out().values.flatten() - atp.corrupted
    nodes = {"embed": atp.resid_pre().values[0].sum() - 8 * atp.corrupted}
    nodes.update({f"L{i // 3}H{i % 3}": heads[i] for i in range(6)})
    if not attn_only:
        nodes.update({f"MLP{l}": v for l, v in enumerate((atp.mlp_out().values - atp.corrupted).sum(1))})
    assert set(nodes) == set(eap.writers)
    scale = max(abs(float(v)) for v in nodes.values())
    for writer, value in nodes.items():
        assert abs(float(total[eap.writers.index(writer)]) - float(value)) <= 1e-12 * scale, writer


def brute_force_ig(model, clean, corrupted, metric, steps):
    """Midpoint-rule integrated gradients of every edge, one forward and backward per step."""
    cfg = model.cfg
    with torch.no_grad():
        _, c = model.run_with_cache(clean)
        _, k = model.run_with_cache(corrupted)
    deltas = {"embed": c["embed"] - k["embed"]}
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            deltas[f"L{l}H{h}"] = (c["z", l][:, :, h] - k["z", l][:, :, h]) @ model.blocks[l].attn.W_O[h].detach()
        if not cfg.attn_only:
            deltas[f"MLP{l}"] = c["mlp_out", l] - k["mlp_out", l]
    readers = [f"blocks.{l}.hook_{x}_input" for l in range(cfg.n_layers) for x in "qkv"]
    readers += [] if cfg.attn_only else [f"blocks.{l}.hook_mlp_in" for l in range(cfg.n_layers)]
    readers.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    total = {}
    model.split_qkv_input = True
    for i in range(steps):
        alpha = (i + 0.5) / steps
        seen = {}

        def embed(x, hook, alpha=alpha):
            return (k["embed"] + alpha * (c["embed"] - k["embed"])).requires_grad_()

        def read(x, hook, seen=seen):
            seen[hook.name] = x = x.view_as(x)
            return x

        with torch.enable_grad(), model.hooks([("hook_embed", embed), (readers, read)]):
            value = metric(model(corrupted)).mean()
            grads = torch.autograd.grad(value, list(seen.values()))
        for name, g in zip(seen, grads):
            total[name] = total.get(name, 0) + g / steps
    model.split_qkv_input = False
    out = {}
    for name, g in total.items():
        layer = int(name.split(".")[1])
        kind = name.rsplit("_", 2)[-2] if name.endswith("_input") else name.rsplit(".", 1)[-1]
        if kind in "qkv":
            for h in range(cfg.n_heads):
                out[f"L{layer}H{h}.{kind}"] = g[:, :, h]
        else:
            out[f"MLP{layer}" if kind == "hook_mlp_in" else "logits"] = g
    return deltas, out


def test_eap_ig_converges_to_the_integrated_gradient():
    model = tiny_model(n_layers=2, normalization="LN").double()
    clean, corrupted, metric = pair(seed=1, batch=3, pos=6)
    deltas, grads = brute_force_ig(model, clean, corrupted, metric, steps=400)
    eap = {k: edge_attribution(model, clean, corrupted, metric, ig_steps=k) for k in (1, 4, 16, 64)}
    mask = edge_mask(model)
    brute = torch.full(mask.shape, float("nan"), dtype=torch.float64)
    for i, w in enumerate(eap[1].writers):
        for j, r in enumerate(eap[1].readers):
            if mask[i, j]:
                brute[i, j] = (deltas[w] * grads[r]).sum()
    errors = {k: float((e.scores - brute).nan_to_num(0).abs().max()) for k, e in eap.items()}
    scale = float(brute.nan_to_num(0).abs().max())
    print({k: f"{v / scale:.2e}" for k, v in errors.items()})
    assert errors[1] > errors[4] > errors[16] > errors[64]
    assert errors[64] <= 0.02 * scale
    atp = edge_attribution(model, clean, corrupted, metric)
    assert atp.scores.nan_to_num(0).equal(eap[1].scores.nan_to_num(0))  # k = 1 is EAP: the gradient at alpha 0


ARCHS = [
    dict(n_layers=2, attn_only=False, normalization="LN", act_fn="gelu"),
    dict(n_layers=2, attn_only=False, normalization="none", act_fn="relu"),
]


@pytest.mark.xfail(
    raises=NotImplementedError,
    strict=True,
    reason="TransformerLens 4.3's edge granularity needs per-head results (use_attn_result), which its "
    "bridge supports only for JointQKV/PositionEmbeddings attention, not the AttentionBridge an export builds",
)
@pytest.mark.parametrize("arch", ARCHS)
def test_edge_scores_equal_transformer_lens(arch):
    """TransformerLens scores an edge per position (writer and reader at the same position); ours
    is their sum over positions."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    from toylens.export import to_transformer_lens

    model = tiny_model(**arch)
    clean, corrupted, metric = pair(seed=3, batch=4, same_answers=True)
    ours = edge_attribution(model, clean, corrupted, metric)
    one = LogitDiff(metric.correct[:1], metric.wrong[:1])
    tl = to_transformer_lens(model).eval()
    theirs = attribution_patch(
        tl, clean, corrupted, lambda logits: one(logits).mean(), EdgeAttributionConfig(granularity="edge")
    ).edge_scores

    def label(node):
        if node.kind == "embed":
            return "embed"
        if node.kind == "attn_head_out":
            return f"L{node.layer}H{node.head}"
        if node.kind in ("mlp_out", "mlp_in"):
            return f"MLP{node.layer}"
        if node.kind == "logits":
            return "logits"
        return f"L{node.layer}H{node.head}.{node.kind[0]}"

    got = torch.zeros_like(ours.scores)
    for (w, r), score in theirs.items():
        got[ours.writers.index(label(w)), ours.readers.index(label(r))] += score
    mask = edge_mask(model)
    assert (got[~mask] == 0).all()
    scale = ours.scores.nan_to_num(0).abs().max()
    assert scale > 1e-3
    assert (ours.scores[mask] - got[mask]).abs().max() <= 1e-4 * scale


# --- circuits: faithfulness by exact edge ablation -------------------------------------------
@pytest.mark.parametrize("attn_only,norm", [(True, "none"), (False, "LN")])
def test_faithfulness_of_the_whole_graph_and_of_no_edge(attn_only, norm):
    """Keeping every edge is the clean run; keeping none (corrupted replacement) gives every
    reader its corrupted input, so the corrupted run."""
    model = tiny_model(n_layers=2, attn_only=attn_only, normalization=norm).double()
    clean, corrupted, metric = pair(seed=4)
    every = faithfulness(model, clean, corrupted, metric, edge_mask(model))
    none = faithfulness(model, clean, corrupted, metric, torch.zeros_like(edge_mask(model)))
    assert abs(every.recovered - 1) <= 1e-9 and abs(none.recovered) <= 1e-9
    assert every.n_edges == every.total_edges == int(edge_mask(model).sum()) and none.n_edges == 0
    assert not model.split_qkv_input  # restored


def test_ablating_one_edge_equals_a_naive_patch():
    """All edges but L0H1 -> L1H2.k: the same as giving L1H2's keys the clean stream with L0H1's
    output swapped for its corrupted one (written here with plain hooks, no split inputs)."""
    model = tiny_model(n_layers=2, normalization="LN").double()
    clean, corrupted, metric = pair(seed=5)
    eap = edge_attribution(model, clean, corrupted, metric)
    keep = edge_mask(model).clone()
    keep[eap.writers.index("L0H1"), eap.readers.index("L1H2.k")] = False
    got = faithfulness(model, clean, corrupted, metric, keep)
    W_O = model.blocks[0].attn.W_O[1].detach()
    with torch.no_grad():
        _, c = model.run_with_cache(clean)
        _, k = model.run_with_cache(corrupted)
        resid = c["resid_pre", 1] - (c["z", 0][:, :, 1] - k["z", 0][:, :, 1]) @ W_O
        keys = model.blocks[1].attn.hook_k  # the key projection of that stream, through the model's own LayerNorm
        ln = model.blocks[1].ln1(resid)
        k_new = torch.einsum("bpd,de->bpe", ln, model.blocks[1].attn.W_K[2]) + model.blocks[1].attn.b_K[2]

        def swap(x, hook):
            x = x.clone()
            x[:, :, 2] = k_new
            return x

        value = metric(model.run_with_hooks(clean, fwd_hooks=[(keys.name, swap)])).mean()
    span = got.clean - got.corrupted
    assert abs(got.metric_value - float(value)) <= 1e-10
    assert abs(got.recovered - (float(value) - got.corrupted) / span) <= 1e-9
    assert abs(got.recovered - 1) > 1e-6  # the edge matters


def test_circuit_by_top_edges_and_threshold():
    model = tiny_model(n_layers=2).double()
    clean, corrupted, metric = pair(seed=6)
    eap = edge_attribution(model, clean, corrupted, metric)
    top = circuit(eap, top=5)
    assert int(top.sum()) == 5
    best = eap.top_edges(5)
    assert {(w, r) for w, r, _ in best} == {(eap.writers[i], eap.readers[j]) for i, j in top.nonzero().tolist()}
    cut = float(eap.normalized.nan_to_num(0).abs().flatten().sort(descending=True).values[9])
    assert int(circuit(eap, threshold=cut).sum()) == 10
    result = faithfulness(model, clean, corrupted, metric, top, ablation="mean")
    assert result.n_edges == 5 and result.ablation == "mean" and result.circuit.equal(top)


def brute_ablated_run(model, tokens, keep, replacement):
    """Logits of `tokens` (float64, one head at a time, no hooks) where reader r's input is the sum
    over the writers w before it of (w's live output if keep[(w, r)] else replacement[w]), plus
    the attention biases b_O written before it; every LayerNorm normalises that sum. With
    `keep=None` every edge is kept. Also returns every writer's live output."""
    sd, cfg = {k: v.detach().double() for k, v in model.state_dict().items()}, model.cfg
    batch, pos = tokens.shape

    def norm(x, name):  # LayerNorm written out (or none)
        if cfg.normalization != "LN":
            return x
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * sd[f"{name}.w"] + sd[f"{name}.b"]

    outs, bias = {"embed": sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][:pos]}, torch.zeros(cfg.d_model).double()

    def read(r):
        kept = lambda w: keep is None or keep[(w, r)]  # noqa: E731
        start = bias.expand(batch, pos, -1)  # (an all-replaced sum of means would lose the batch)
        return sum((out if kept(w) else replacement[w] for w, out in outs.items()), start)

    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    for l in range(cfg.n_layers):
        p, new = f"blocks.{l}.", {}
        for h in range(cfg.n_heads):
            q, k, v = (norm(read(f"L{l}H{h}.{x}"), p + "ln1") @ sd[f"{p}attn.W_{x.upper()}"][h] for x in "qkv")
            q, k, v = q + sd[p + "attn.b_Q"][h], k + sd[p + "attn.b_K"][h], v + sd[p + "attn.b_V"][h]
            scores = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).masked_fill(~causal, float("-inf"))
            new[f"L{l}H{h}"] = scores.softmax(-1) @ v @ sd[p + "attn.W_O"][h]
        outs.update(new)
        bias = bias + sd[p + "attn.b_O"]
        if not cfg.attn_only:
            pre = norm(read(f"MLP{l}"), p + "ln2") @ sd[p + "mlp.W_in"] + sd[p + "mlp.b_in"]
            act = torch.relu(pre) if cfg.act_fn == "relu" else torch.nn.functional.gelu(pre)
            outs[f"MLP{l}"] = act @ sd[p + "mlp.W_out"] + sd[p + "mlp.b_out"]
    return norm(read("logits"), "ln_final") @ sd["unembed.W_U"] + sd["unembed.b_U"], outs


@pytest.mark.parametrize("arch", [*ARCHS, dict(n_layers=2, attn_only=True, normalization="LN")])
@pytest.mark.parametrize("ablation", ["corrupted", "mean", "zero"])
def test_faithfulness_equals_a_brute_force_edge_ablation(arch, ablation):
    """Random circuits, every ablation: the metric, clean, corrupted and empty-circuit values and
    the recovered fraction (metric - empty) / (clean - empty) equal a float64 brute force that
    builds each reader's input writer by writer (written above, without the model's code)."""
    model = tiny_model(**arch).double()
    clean, corrupted, metric = pair(seed=7)
    mask = edge_mask(model)
    eap = edge_attribution(model, clean, corrupted, metric)
    _, live = brute_ablated_run(model, clean, None, None)
    replacement = {
        "corrupted": lambda: brute_ablated_run(model, corrupted, None, None)[1],
        "mean": lambda: {w: out.mean(0, keepdim=True) for w, out in live.items()},
        "zero": lambda: dict.fromkeys(live, 0.0),
    }[ablation]()
    value = lambda keep: float(metric(brute_ablated_run(model, clean, keep, replacement)[0]).mean())  # noqa: E731
    empty = value(dict.fromkeys(((w, r) for w in eap.writers for r in eap.readers), False))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        keep = mask & (torch.rand(mask.shape, generator=gen) < 0.5)
        got = faithfulness(model, clean, corrupted, metric, keep, ablation=ablation)
        kept = {(w, r): bool(keep[i, j]) for i, w in enumerate(eap.writers) for j, r in enumerate(eap.readers)}
        want = value(kept)
        assert abs(got.metric_value - want) <= 1e-12 and abs(got.ablated - empty) <= 1e-12
        assert abs(got.clean - float(metric(brute_ablated_run(model, clean, None, None)[0]).mean())) <= 1e-12
        assert abs(got.corrupted - float(metric(brute_ablated_run(model, corrupted, None, None)[0]).mean())) <= 1e-12
        assert abs(got.recovered - (want - empty) / (got.clean - empty)) <= 1e-9
    if ablation != "corrupted":  # the empty circuit is not the corrupted run: the gap is the empty circuit's
        assert abs(empty - got.corrupted) > 1e-6


def test_smallest_circuit_is_the_first_size_that_reaches_the_target():
    """Every size's recovered fraction is `faithfulness` of that many strongest edges, the sizes
    grow ~1.4x from 1 to every edge, and the circuit is the first size at the target."""
    model = tiny_model(n_layers=2, normalization="LN").double()
    clean, corrupted, metric = pair(seed=8)
    eap = edge_attribution(model, clean, corrupted, metric, ig_steps=3)
    total = int(edge_mask(model).sum())
    found = smallest_circuit(model, clean, corrupted, metric, eap, target=0.8)
    assert found.sizes[0] == 1 and found.sizes[-1] == total and found.sizes == sorted(set(found.sizes))
    assert all(b <= 1.5 * a + 1 for a, b in zip(found.sizes, found.sizes[1:]))
    for n, recovered in zip(found.sizes, found.curve):
        got = faithfulness(model, clean, corrupted, metric, circuit(eap, top=n)).recovered
        assert abs(got - recovered) <= 1e-9, n
    first = next(n for n, r in zip(found.sizes, found.curve) if r >= 0.8)
    print(dict(zip(found.sizes, found.curve)), first)
    assert 1 < first < total, "a target this model meets part-way (else the test says nothing)"
    assert found.n_edges == first and found.circuit.equal(circuit(eap, top=first)) and found.target == 0.8
    assert found.recovered == found.curve[found.sizes.index(first)]
    never = smallest_circuit(model, clean, corrupted, metric, eap, target=2.0)
    assert never.n_edges == total and abs(never.recovered - 1) <= 1e-9  # no size reaches it: every edge
