"""Weight-restricted (refined) LLC: frozen weights never move, a closed form, restricting to every
weight is the whole-model estimate, a batch of restrictions is each restriction alone, the CLI."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from conftest import Point, sets, tiny_config

from toylens.errors import ToylensError
from toylens.llc import (
    LLCSettings,
    Restriction,
    calibrate,
    estimate_many,
    llc_over_checkpoints,
    module_objective,
    restrictions,
)
from toylens.llc import calibration as llc_calibration
from toylens.llc import driver as llc_driver
from toylens.llc.objective import run_objective
from toylens.llc.sampler import MinibatchDraws, RowChunks, RowSettings, loss_and_grad, run_sgld
from toylens.rundir import RunDir, load
from toylens.train import train


def only(d: int, k: int, name: str = "") -> Restriction:
    """The first k of d coordinates of Point.w."""
    mask = torch.zeros(d, dtype=torch.bool)
    mask[:k] = True
    return Restriction(name or f"first{k}", {"w": mask})


def attention_shapes(layers: int = 2, heads: int = 4) -> dict[str, torch.Size]:
    shapes = {"embed.W_E": torch.Size([7, 6]), "unembed.W_U": torch.Size([6, 7])}
    for l in range(layers):
        for p, s in {"W_Q": [heads, 6, 3], "W_O": [heads, 3, 6], "b_Q": [heads, 3], "b_O": [6]}.items():
            shapes[f"blocks.{l}.attn.{p}"] = torch.Size(s)
    return shapes


def test_specs_expand_to_head_slices_layers_and_globs():
    shapes = attention_shapes()
    heads = restrictions(shapes, ["heads"])
    assert [r.name for r in heads] == [f"l{l}h{h}" for l in range(2) for h in range(4)]
    l1h2 = heads[6].masks
    assert set(l1h2) == {"blocks.1.attn.W_Q", "blocks.1.attn.W_O", "blocks.1.attn.b_Q"}  # b_O is shared
    assert l1h2["blocks.1.attn.W_Q"][2].all() and l1h2["blocks.1.attn.W_Q"].sum() == 18
    assert [r.name for r in restrictions(shapes, ["layers", "embed", "unembed"])] == [
        "l0.attn",
        "l1.attn",
        "embed",
        "unembed",
    ]
    glob = restrictions(shapes, ["blocks.*.attn.b_*:gamma=1000:nbeta=20"])[0]
    assert glob.name == "blocks.STAR.attn.b_STAR" and (glob.gamma, glob.nbeta) == (1000.0, 20.0)
    assert set(glob.masks) == {"blocks.0.attn.b_Q", "blocks.0.attn.b_O", "blocks.1.attn.b_Q", "blocks.1.attn.b_O"}
    own = restrictions(shapes, ["l0h1:epsilon=1e-4:gamma=0"])[0]
    assert (own.epsilon, own.gamma, own.nbeta) == (1e-4, 0.0, None)
    assert [r.name for r in restrictions(shapes, ["all"])] == ["all"] and set(
        restrictions(shapes, ["all"])[0].masks
    ) == set(shapes)
    bad_specs = (["nothing.*"], ["l0h9"], ["heads", "l0h1"], ["embed:beta=2"], ["l0h1:epsilon=0"], ["l0h1:gamma=-1"])
    for bad in bad_specs:
        with pytest.raises(ToylensError):
            restrictions(shapes, bad)


def test_frozen_weights_never_move():
    shapes = attention_shapes(layers=1, heads=3)
    gen = torch.Generator().manual_seed(0)
    centre = {k: torch.randn(2, *s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}  # 2 rows
    r = restrictions(shapes, ["l0h1"])[0]
    masks = {k: torch.stack([m, m]) for k, m in r.full(shapes).items()}
    seen: list[dict[str, torch.Tensor]] = []

    def loss(params, idx):  # a coupled objective, so every weight has a nonzero gradient
        seen.append({k: v.detach().clone() for k, v in params.items()})
        total = sum(v.flatten(1).sum(1) for v in params.values())
        return total.pow(2) + sum(v.pow(2).flatten(1).sum(1) for v in params.values())

    rows = RowSettings(
        epsilon=torch.full((2,), 1e-3, dtype=torch.float64),
        gamma=torch.full((2,), 10.0, dtype=torch.float64),
        nbeta=torch.full((2,), 5.0, dtype=torch.float64),
        mask=masks,
    )
    run_sgld(loss, centre, rows, MinibatchDraws(0, 1, 2, None, None), steps=20, mala_every=3)
    assert len(seen) > 20  # every step, and the MALA proposals
    for w in seen[1:]:
        for k in shapes:
            frozen = ~masks[k]
            assert torch.equal(w[k][frozen], centre[k][frozen]), k
    last = seen[-1]["blocks.0.attn.W_Q"]
    assert not torch.equal(last[:, 1], centre["blocks.0.attn.W_Q"][:, 1])  # the head itself moved


def test_restricted_quadratic_is_k_over_2():
    # nβ·L = (nβ/2)·wᵀHw on d = 6 weights, H coupled (SPD), γ = 0: restricted to k weights, the others
    # at w* = 0, the sampled potential is (nβ/2)·uᵀH_kk u, a nondegenerate quadratic in k
    # dimensions, so λ = k/2 whatever H_kk. Discrete-time SGLD with step ε has variance 1/(a(1 - εa/4))
    # along an eigenvector of nβ·H_kk with eigenvalue a, so E[nβ·L] = Σ_a 1/(2(1 - εa/4)) exactly.
    d, nbeta, eps = 6, 1.0, 0.02
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    h = a @ a.T / d + torch.eye(d, dtype=torch.float64)
    objective = module_objective(Point(d), lambda m, b: 0.5 * m() @ h @ m(), None, LLCSettings())
    s = LLCSettings(epsilon=eps, gamma=0.0, nbeta=nbeta, chains=500, burnin=500, draws=1000, mala_every=0)
    centre = {"w": torch.zeros(d, dtype=torch.float64)}
    ests = estimate_many(objective, [centre], s, restrict=[only(d, 1), only(d, 2), only(d, 4), only(d, 6)])
    for k, est in zip((1, 2, 4, 6), ests):
        a = torch.linalg.eigvalsh(nbeta * h[:k, :k])
        exact = float((0.5 / (1 - eps * a / 4)).sum())
        assert exact == pytest.approx(k / 2, rel=0.03)
        assert est.llc == pytest.approx(exact, rel=0.03), (k, est.llc, exact)
        print(f"k={k}: λ̂ = {est.llc:.3f} ± {est.llc_se:.3f}, exact {exact:.3f}, k/2 = {k / 2}")


def test_restricting_to_every_weight_is_the_whole_model_estimate():
    d = 4
    objective = module_objective(Point(d), lambda m, b: 0.5 * m().pow(2).sum(), None, LLCSettings())
    s = LLCSettings(epsilon=1e-3, gamma=10.0, nbeta=10.0, chains=3, burnin=5, draws=10, mala_every=2)
    centre = {"w": torch.linspace(-1, 1, d, dtype=torch.float64)}
    whole = estimate_many(objective, [centre], s)[0]
    restricted = estimate_many(objective, [centre], s, restrict=[only(d, d, "all")])[0]
    assert torch.equal(whole.loss_trace, restricted.loss_trace)
    assert torch.equal(whole.accept_trace, restricted.accept_trace)
    assert whole.llc == restricted.llc


def test_a_batch_of_restrictions_is_each_restriction_alone():
    d = 5
    objective = module_objective(Point(d), lambda m, b: m().sum() ** 2 + m().pow(4).sum(), None, LLCSettings())
    s = LLCSettings(epsilon=1e-3, gamma=10.0, nbeta=10.0, chains=2, burnin=5, draws=10, mala_every=2)
    centres = [{"w": torch.full((d,), v, dtype=torch.float64)} for v in (0.1, -0.3)]
    rs = [
        only(d, 1),
        only(d, 3),
        Restriction("own", {"w": torch.tensor([0, 1, 0, 1, 1]).bool()}, nbeta=3.0, gamma=50.0),
    ]
    batched = estimate_many(objective, centres, s, restrict=rs)
    for i, (c, r) in enumerate((c, r) for c in centres for r in rs):
        alone = estimate_many(objective, [c], s, restrict=[r])[0]
        torch.testing.assert_close(batched[i].loss_trace, alone.loss_trace, rtol=1e-12, atol=1e-12)
        assert batched[i].llc == pytest.approx(alone.llc, rel=1e-10)
        assert (batched[i].nbeta, batched[i].gamma) == ((3.0, 50.0) if r.name == "own" else (10.0, 10.0))


def test_a_calibration_sweep_over_restrictions_is_each_restriction_at_each_grid_point():
    d = 4
    objective = module_objective(Point(d), lambda m, b: m().sum() ** 2 + m().pow(4).sum(), None, LLCSettings())
    s = LLCSettings(epsilon=1e-3, gamma=10.0, nbeta=10.0, chains=2, burnin=5, draws=10, mala_every=2)
    centre = {"w": torch.full((d,), 0.2, dtype=torch.float64)}
    rs = [only(d, 1), Restriction("own", {"w": torch.tensor([0, 1, 1, 0]).bool()}, nbeta=3.0)]
    grid = [(1e-4, 10.0), (1e-3, 10.0), (1e-3, 100.0)]
    swept = estimate_many(objective, [centre], s, grid=grid, restrict=rs)
    assert len(swept) == len(rs) * len(grid)
    for i, (r, (e, g)) in enumerate((r, p) for r in rs for p in grid):
        alone = estimate_many(objective, [centre], s, restrict=[replace(r, epsilon=e, gamma=g)])[0]
        torch.testing.assert_close(swept[i].loss_trace, alone.loss_trace, rtol=1e-12, atol=1e-12)
        assert (swept[i].epsilon, swept[i].gamma, swept[i].nbeta) == (e, g, 3.0 if r.name == "own" else 10.0)


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    cfg = tiny_config(model={"n_layers": 2, "n_heads": 2, "d_model": 8, "attn_only": True}, train={"epochs": 2})
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run_dir


def test_cli_restrict_heads_writes_one_result_per_head_and_checkpoint_and_skips_them(
    attention_run, toylens_main, monkeypatch
):
    calls: list[int] = []  # estimates per batched computation
    real = llc_driver.estimate_many

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(len(out))
        return out

    monkeypatch.setattr(llc_driver, "estimate_many", counted)
    fast = sets(chains=2, draws=4, burnin=2, batch_size=8, init_batches=1)
    args = ["llc", attention_run, "--restrict", "heads", "--checkpoint", "0,2", *fast]
    first = toylens_main(*args, "--no-progress")
    assert first.exit_code == 0, first.stderr
    run = RunDir(attention_run)
    heads = [f"l{l}h{h}" for l in range(2) for h in range(2)]
    for head in heads:
        for ckpt in ("epoch-0000", "epoch-0002"):
            summary = run.read_json(f"llc/{head}/{ckpt}.json")
            assert (
                summary["restriction"] == head
                and summary["params"]["blocks.0.attn.W_Q" if head[1] == "0" else "blocks.1.attn.W_Q"] == 8 * 4
            )
            assert run.has(f"llc/{head}/{ckpt}.safetensors")
            assert "llc" in summary and "flags" in summary
    assert not run.has("llc/all/epoch-0000.json")  # the whole model is another restriction
    assert calls == [2 * 4]  # 4 heads x 2 checkpoints: one batched computation, not a loop
    before = {h: run.read_json(f"llc/{h}/epoch-0002.json")["wall_s"] for h in heads}
    again = toylens_main(*args, "--no-progress")
    assert again.exit_code == 0 and all(h in again.stdout for h in heads)
    assert {h: run.read_json(f"llc/{h}/epoch-0002.json")["wall_s"] for h in heads} == before
    assert calls == [2 * 4]  # the rerun sampled nothing


def test_calibrate_per_restriction_then_estimates_use_each_pick(attention_run, toylens_main, monkeypatch):
    """The wiring: a pick per restriction is stored and used, a restriction without one keeps the
    run's settings. (The tiny run is not trained to a minimum, so `choose`, tested on its own,
    would reject every setting; here it picks the larger ε for l0h0 and nothing for l1h1.)"""
    picks = itertools.cycle([1, None])  # choose is asked restriction by restriction: l0h0, then l1h1
    monkeypatch.setattr(llc_calibration, "choose", lambda part: next(picks))
    fast = LLCSettings(chains=2, draws=20, burnin=5, batch_size=8, init_batches=1)
    cals = calibrate(
        attention_run,
        "final",
        restrict=["l0h0", "l1h1"],
        epsilons=[1e-5, 1e-4],
        gammas=[100.0],
        settings=fast,
        progress=False,
    )
    run = RunDir(attention_run)
    stored = run.read_json("llc/calibration.json")["restrictions"]
    assert set(cals) == set(stored) == {"l0h0", "l1h1"}
    for name, cal in cals.items():
        assert [(e.epsilon, e.gamma) for e in cal.estimates] == [(1e-5, 100.0), (1e-4, 100.0)]
        assert len(stored[name]["grid"]) == 2 and stored[name]["checkpoint"] == cal.checkpoint
    picked = {n: c.estimates[c.chosen] for n, c in cals.items() if c.chosen is not None}
    assert set(picked) == {"l0h0"} and stored["l0h0"]["chosen"] == 1
    assert stored["l1h1"]["chosen"] is None and not run.has("llc/settings.json")  # only `all` sets the run's
    results = llc_over_checkpoints(
        attention_run, "final", restrict=["l0h0", "l1h1", "l0h1"], settings=fast, progress=False
    )
    for name, per_ckpt in results.items():
        (summary,) = per_ckpt.values()
        expected = (picked[name].epsilon, picked[name].gamma) if name in picked else (fast.epsilon, fast.gamma)
        assert (summary["settings"]["epsilon"], summary["settings"]["gamma"]) == expected, name
    shown = toylens_main(
        "llc",
        "calibrate",
        attention_run,
        "--restrict",
        "l0h0",
        "--epsilons",
        "1e-5,1e-4",
        "--gammas",
        "100",
        *sets(draws=20, chains=2, init_batches=1, batch_size=8),
        "--no-write",
        "--no-progress",
    )
    assert shown.exit_code in (0, 1) and "l0h0:" in shown.stdout and "calibration on" in shown.stdout


def test_a_chunk_differentiates_only_what_its_rows_sample(attention_run):
    """Rows restricted to a layer-1 head differentiate layer 1's parameters only (autograd stops
    there); the gradient of each parameter a chunk samples is the full computation's, the rest are
    zeros."""
    loaded = load(attention_run, "final", device="cpu")
    objective = run_objective(loaded.model, loaded.config, loaded.task, LLCSettings())
    rs = restrictions(loaded.model, ["l0h1", "l1h0"])
    shapes = {k: v.shape for k, v in loaded.model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    w = {k: v.detach() + 0.01 * torch.randn(4, *v.shape, generator=gen) for k, v in loaded.model.named_parameters()}
    idx = torch.randint(objective.n_data, (4, 8), generator=gen)
    rows = [rs[0], rs[0], rs[1], rs[1]]
    sampled = {k: [k in r.masks for r in rows] for k in shapes}
    loss, grad = loss_and_grad(objective, w, idx)
    for size in (None, 2):  # one chunk of every row, or a chunk per restriction
        got_loss, got = loss_and_grad(objective, w, idx, RowChunks(size), sampled)
        assert torch.equal(got_loss, loss)
        for k in shapes:
            wanted = sampled[k] if size == 2 else [any(sampled[k])] * 4
            for row in range(4):
                if wanted[row]:
                    torch.testing.assert_close(got[k][row], grad[k][row], rtol=1e-5, atol=1e-8)
                else:
                    assert not got[k][row].any(), (k, row)
    assert all(not any(sampled[k][2:]) for k in shapes if not k.startswith("blocks.1.attn."))
