"""Edge attribution (EAP, EAP-IG): a writer's edges add up to its node AtP estimate, the scores
equal TransformerLens 4.3's edge attribution on the exported model, and EAP-IG converges to a
float64 brute-force integrated gradient (one forward and backward per step, written here)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from toylens.analysis.attribution_patching import AttributionPatcher
from toylens.analysis.edge_attribution import edge_attribution, edge_mask
from toylens.analysis.metrics import LogitDiff


def pair(seed=0, batch=5, pos=8, same_answers=False):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 10, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1 + torch.randint(0, 8, (batch,), generator=g)) % 10
    rows = 1 if same_answers else batch
    correct = torch.randint(0, 10, (rows, pos), generator=g).expand(batch, pos)
    wrong = torch.randint(0, 10, (rows, pos), generator=g).expand(batch, pos)
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
