"""Circuits, copying and composition scores against dense float64 matrices built here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from toylens.analysis.circuits import circuits, copying_scores, full_ov, full_qk_positions, full_qk_tokens
from toylens.analysis.composition import composition_scores, random_baseline, strongest_source
from toylens.analysis.regularisation import activation_sparsity, weight_norms


def dense_heads(model):
    """Per-head float64 QK and OV matrices [l][h] with LayerNorm gains and centring folded in."""
    P = {k: v.double() for k, v in model.state_dict().items()}
    d = model.cfg.d_model
    C = torch.eye(d, dtype=torch.float64) - torch.full((d, d), 1 / d, dtype=torch.float64)
    ln = model.cfg.normalization == "LN"
    qk, ov = [], []
    for l in range(model.cfg.n_layers):
        a = f"blocks.{l}.attn"
        pre = C @ torch.diag(P[f"blocks.{l}.ln1.w"]) if ln else torch.eye(d, dtype=torch.float64)
        qk.append([pre @ P[f"{a}.W_Q"][h] @ (pre @ P[f"{a}.W_K"][h]).T for h in range(model.cfg.n_heads)])
        ov.append([pre @ P[f"{a}.W_V"][h] @ P[f"{a}.W_O"][h] for h in range(model.cfg.n_heads)])
    W_U = (C @ torch.diag(P["ln_final.w"]) if ln else torch.eye(d, dtype=torch.float64)) @ P["unembed.W_U"]
    return P, qk, ov, W_U


@pytest.mark.parametrize("norm", ["LN", "none"])
def test_full_circuits_match_dense(norm):
    model = tiny_model(n_layers=2, normalization=norm)
    P, qk, ov, W_U = dense_heads(model)
    E, pos = P["embed.W_E"], P["pos_embed.W_pos"]
    for l in range(2):
        for h in range(3):
            torch.testing.assert_close(
                full_qk_tokens(model)[l, h].AB.double(), E @ qk[l][h] @ E.T, atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                full_qk_positions(model)[l, h].AB.double(), pos @ qk[l][h] @ pos.T, atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(full_ov(model)[l, h].AB.double(), E @ ov[l][h] @ W_U, atol=1e-5, rtol=1e-4)
            eig = torch.linalg.eigvals(E[:10] @ ov[l][h] @ W_U)
            expect = eig.sum().real / eig.abs().sum()
            assert abs(float(copying_scores(model)[l, h]) - float(expect)) < 1e-4


@pytest.mark.parametrize("norm", ["LN", "none"])
def test_composition_scores_match_float64_brute_force(norm):
    model = tiny_model(n_layers=3, normalization=norm)
    _, qk, ov, _ = dense_heads(model)
    comp = composition_scores(model, baseline_samples=10)
    fro = torch.linalg.matrix_norm
    for l1 in range(3):
        for l2 in range(3):
            for h1 in range(3):
                for h2 in range(3):
                    if l1 >= l2:
                        assert math.isnan(comp.q[l1, h1, l2, h2]) and math.isnan(comp.v[l1, h1, l2, h2])
                        continue
                    A, Q, V = ov[l1][h1], qk[l2][h2], ov[l2][h2]
                    expect = {
                        "q": fro(A @ Q) / (fro(A) * fro(Q)),
                        "k": fro(A @ Q.T) / (fro(A) * fro(Q)),
                        "v": fro(A @ V) / (fro(A) * fro(V)),
                    }
                    for name, value in expect.items():
                        got = getattr(comp, name)[l1, h1, l2, h2]
                        assert abs(float(got) - float(value)) < 1e-5, (name, l1, h1, l2, h2)
    l1, h1 = strongest_source(comp.k, 2, 0)
    assert comp.k[l1, h1, 2, 0] == comp.k[:2, :, 2, 0].max()


def test_random_baseline_is_about_one_over_sqrt_d():
    mean, std = random_baseline(d_model=64, d_head=16, samples=300)
    for name in "qkv":
        assert abs(mean[name] - 1 / 8) < 0.02 and 0 < std[name] < 0.05


def test_circuit_heatmaps_are_corners():
    model = tiny_model(n_layers=1, normalization="none")
    labels = [f"t{i}" for i in range(11)]
    c = circuits(model, labels, labels[:10], max_tokens=6, max_pos=5)
    assert (
        c.qk_tokens.shape == (1, 3, 6, 6) and c.ov_tokens.shape == (1, 3, 6, 6) and c.qk_positions.shape == (1, 3, 5, 5)
    )
    torch.testing.assert_close(c.qk_tokens, full_qk_tokens(model).AB[..., :6, :6])
    assert c.token_labels == labels[:6] and c.copying.shape == (1, 3)
    skipped = circuits(model, labels, labels[:10], copy_tokens=torch.tensor([], dtype=torch.long))
    assert skipped.copying.isnan().all()


def test_weight_norms_and_sparsity_brute_force(tokens):
    model = tiny_model(n_layers=2, act_fn="relu")
    norms = weight_norms(model)
    assert abs(norms.heads["W_Q"][1, 2] - model.blocks[1].attn.W_Q[2].norm()) < 1e-5
    qk = model.blocks[0].attn.W_Q[1] @ model.blocks[0].attn.W_K[1].T
    assert abs(norms.heads["QK"][0, 1] - qk.norm()) < 1e-5
    assert abs(norms.norms["L1.W_out"] - float(model.blocks[1].mlp.W_out.detach().norm())) < 1e-5
    sp = activation_sparsity(model, tokens)
    _, cache = model.run_with_cache(tokens)
    for l in range(2):
        post = cache["post", l].double()
        n_active = sum(int(v > 0) for v in post.flatten().tolist())
        assert abs(float(sp.fraction_active[l]) - n_active / post.numel()) < 1e-6
        assert abs(float(sp.l1[l]) - float(post.abs().sum() / (post.shape[0] * post.shape[1]))) < 1e-5
    assert activation_sparsity(tiny_model(n_layers=1, attn_only=True), tokens) is None
