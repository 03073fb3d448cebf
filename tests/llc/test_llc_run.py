"""LLC of a run's checkpoints: the sampled objective is the training objective, results land in
RUN/llc/all/ (skipped when done, resumable after an interruption), the whole model through the one
driver is the unrestricted computation bit for bit, calibration, the layout check, and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import sets, tiny_config

from toylens.errors import ToylensError
from toylens.llc import (
    LLCEstimate,
    LLCSettings,
    calibrate,
    choose,
    estimate_loaded,
    llc_over_checkpoints,
    load_settings,
    read_estimates,
    restrictions,
    run_objective,
)
from toylens.llc import driver as llc_driver
from toylens.llc.estimator import estimate_many
from toylens.llc.objective import CHUNK_ELEMENTS
from toylens.llc.sampler import RowChunks, loss_and_grad, row_chunks
from toylens.rundir import RunDir, load
from toylens.train import train
from toylens.train.regularisers import L1Penalty, decays

FAST = LLCSettings(epsilon=1e-4, gamma=100.0, batch_size=16, chains=2, burnin=3, draws=8, init_batches=2, mala_every=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, device):
    cfg = tiny_config(
        train={"epochs": 2, "weight_decay": 0.1, "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 1e-3}}
    )
    out = tmp_path_factory.mktemp("runs")
    return train(cfg, out, progress=False, device=device).run_dir


# The run's L1 hook, which the stacked forward serves, and one it does not (the vmapped path).
@pytest.mark.parametrize("l1_hook,stacked", [("blocks.0.mlp.hook_post", True), ("blocks.0.attn.hook_z", False)])
def test_objective_is_the_training_objective(run_dir, l1_hook, stacked, device):
    loaded = load(run_dir, "final", device=device)
    cfg, task, model = loaded.config, loaded.task, loaded.model
    cfg = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"l1": cfg.train.l1.model_copy(update={"hooks": [l1_hook]})})}
    )
    objective = run_objective(model, cfg, task, LLCSettings(weight_decay=None))  # the run's own decay
    assert (objective.stacked_fn is not None) == stacked
    assert task.loss_positions().tolist() == [4, 5, 6, 7]  # sorting 4 values: the sorted half
    gen = torch.Generator().manual_seed(0)
    base = {k: v.detach() for k, v in model.named_parameters()}
    w = {k: torch.stack([v, v + 0.01 * torch.randn(v.shape, generator=gen).to(device)]) for k, v in base.items()}
    idx = torch.randint(len(task.splits["train"]), (2, 12), generator=gen)
    terms = objective.terms(w, idx)
    model.explicit_attention = False  # the reference takes the ordinary (SDPA) path
    penalty = L1Penalty(cfg.train.l1)
    for r in range(2):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(w[k][r])
            batch = task.splits["train"].batch(idx[r]).to(device)
            with model.hooks(penalty.fwd_hooks):
                logits = model(batch.tokens)
            assert float(terms["loss"][r]) == pytest.approx(float(task.loss(logits, batch)), rel=1e-5)
            assert float(terms["l1"][r]) == pytest.approx(float(penalty.take()), rel=1e-5)
            decay = sum(p.pow(2).sum() for k, p in model.named_parameters() if decays(k, cfg.train.weight_decay_on))
            assert float(terms["weight_decay"][r]) == pytest.approx(0.5 * 0.1 * float(decay), rel=1e-5)
    # Gradients too (the stacked path takes the L1 of ReLU outputs without abs): row 0's gradient
    # of the whole objective against the hooked model's.
    leaves = {k: v.clone().requires_grad_(True) for k, v in w.items()}
    model.explicit_attention = True  # the objective's own path again (vmap has no rule for CPU SDPA)
    grads = torch.autograd.grad(objective(leaves, idx).sum(), list(leaves.values()))
    model.explicit_attention = False
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(w[k][0])
    batch = task.splits["train"].batch(idx[0]).to(device)
    with model.hooks(penalty.fwd_hooks):
        logits = model(batch.tokens)
    total = task.loss(logits, batch) + penalty.take()
    total = total + 0.05 * sum(
        p.pow(2).sum() for k, p in model.named_parameters() if decays(k, cfg.train.weight_decay_on)
    )
    ref = torch.autograd.grad(total, [p for _, p in model.named_parameters()])
    for (k, _), g, r in zip(model.named_parameters(), grads, ref):
        assert torch.allclose(g[0], r, rtol=1e-4, atol=1e-6), k
    off = run_objective(model, cfg, task, LLCSettings(l1=False, weight_decay=0.0)).terms(w, idx)
    assert set(off) == {"loss"}


def test_the_weight_decay_and_l1_settings_each_add_their_term(run_dir, device):
    # L(w*) on the whole training split, with each regulariser setting on alone: it moves from the
    # task loss by that term, computed here by hand in float64 from the weights and activations.
    loaded = load(run_dir, "final", device=device)
    model, task = loaded.model, loaded.task
    batch = task.splits["train"].batch(torch.arange(len(task.splits["train"]))).to(device)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens)
    l1 = 1e-3 * float(cache["blocks.0.mlp.hook_post"].double().abs().sum(-1).mean())
    squares = sum(
        float(p.detach().double().pow(2).sum())
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1] in {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U"}
    )
    s = FAST.model_copy(update={"batch_size": None, "chains": 1, "burnin": 0, "draws": 2, "mala_every": 0})

    def added(**settings):
        est = estimate_loaded(loaded, s.model_copy(update=settings))
        return est.init_loss - est.train_loss, est.settings["weight_decay"]

    assert added(l1=False, weight_decay=0.0) == (0.0, 0.0)
    assert added(l1=True, weight_decay=0.0)[0] == pytest.approx(l1, rel=1e-5)
    assert added(l1=False, weight_decay=0.05)[0] == pytest.approx(0.5 * 0.05 * squares, rel=1e-5)
    decay, stored = added(l1=False, weight_decay=None)  # null: the run's train.weight_decay, 0.1
    assert decay == pytest.approx(0.5 * 0.1 * squares, rel=1e-5) and stored == 0.1


def test_rows_in_chunks_and_on_worker_threads_give_each_row_its_own_result(run_dir):
    loaded = load(run_dir, "final", device="cpu")  # row chunks and worker threads are the CPU's
    objective = run_objective(loaded.model, loaded.config, loaded.task, LLCSettings())
    cfg = loaded.model.cfg  # sorting 4 values: 2·4 tokens; q, k and v together (3·2 heads·8) the widest
    assert (cfg.n_heads, cfg.d_head, cfg.d_mlp) == (2, 8, 32)
    assert objective.rows_per_chunk(16) == CHUNK_ELEMENTS // (16 * 8 * 48)
    assert objective.rows_per_chunk(4096) == 1
    gen = torch.Generator().manual_seed(0)
    w = {k: v.detach() + 0.01 * torch.randn(5, *v.shape, generator=gen) for k, v in loaded.model.named_parameters()}
    idx = torch.randint(len(loaded.task.splits["train"]), (5, 16), generator=gen)
    loss, grad = loss_and_grad(objective, w, idx)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for size in (1, 2, 3):
            in_turn = loss_and_grad(objective, w, idx, RowChunks(size))
            with row_chunks(size, 5) as chunks:
                assert chunks.pool is not None and torch.get_num_threads() == 1  # one intra-op thread per worker
                pooled = loss_and_grad(objective, w, idx, chunks)
                again = loss_and_grad(objective, w, idx, chunks)
            assert torch.get_num_threads() == 2
            for got in (in_turn, pooled):
                assert torch.allclose(got[0], loss, rtol=1e-5)
                for k in w:
                    assert torch.allclose(got[1][k], grad[k], rtol=1e-4, atol=1e-7), (size, k)
            assert torch.equal(pooled[0], again[0]) and all(torch.equal(pooled[1][k], again[1][k]) for k in w)
        with row_chunks(None, 5) as chunks:  # one chunk: nothing to spread
            assert chunks.pool is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_every_checkpoint_then_skip_then_resume(run_dir, monkeypatch, device):
    run = RunDir(run_dir)
    results = llc_over_checkpoints(run, settings=FAST, progress=False, group=2, device=device)["all"]
    names = [c.name for c in run.checkpoints()]
    assert list(results) == names == ["epoch-0000", "epoch-0001", "epoch-0002"]
    for name, r in results.items():
        assert r["checkpoint"] == name and r["settings"]["chains"] == 2 and r["settings"]["weight_decay"] == 0.0
        assert r["nbeta"] == pytest.approx(16 / torch.log(torch.tensor(16.0)).item())
        assert (
            r["restriction"] == "all"
            and r["data"] is None
            and sum(r["params"].values()) == sum(p.numel() for p in load(run_dir, device=device).model.parameters())
        )
        traces, _ = run.read_tensors(f"llc/all/{name}.safetensors")
        assert traces["loss"].shape == (2, FAST.steps) and traces["accept"].shape == (2, 6)
        assert isinstance(r["llc"], float) and r["train_loss"] > 0 and isinstance(r["warnings"], list)
    assert [r["checkpoint"] for r in read_estimates(run)["all"]] == names
    # The same estimate in memory from a loaded checkpoint.
    alone = estimate_loaded(load(run_dir, "epoch-0002", device=device), FAST)
    assert alone.llc == pytest.approx(results["epoch-0002"]["llc"], rel=1e-4)

    def fail(*args, **kwargs):
        raise AssertionError("a finished checkpoint was estimated again")

    monkeypatch.setattr(llc_driver, "estimate_many", fail)
    assert llc_over_checkpoints(run, settings=FAST, progress=False, device=device)["all"] == results
    monkeypatch.undo()

    # Interrupted after the first of two groups: the first checkpoint's result survives.
    run.remove("llc/all/epoch-0001.json")
    run.remove("llc/all/epoch-0002.json")
    real, calls = llc_driver.estimate_many, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(llc_driver, "estimate_many", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        llc_over_checkpoints(run, settings=FAST, progress=False, group=1, device=device)
    assert run.has("llc/all/epoch-0001.json") and not run.has("llc/all/epoch-0002.json")
    monkeypatch.undo()
    again = llc_over_checkpoints(run, settings=FAST, progress=False, group=1, device=device)["all"]
    assert again["epoch-0002"]["llc"] == pytest.approx(results["epoch-0002"]["llc"], rel=1e-4)
    # Other settings: estimated again.
    changed = llc_over_checkpoints(
        run, "2", settings=FAST.model_copy(update={"chains": 3}), progress=False, device=device
    )["all"]
    assert len(changed["epoch-0002"]["llc_chains"]) == 3


def test_the_one_driver_is_the_unrestricted_and_restricted_computation_bit_for_bit(run_dir, tmp_path, device):
    """The whole model is the restriction `all`: through the driver its estimate is the unrestricted
    batched computation's, and each head's is the restricted one's, to the bit (same seed)."""
    import shutil

    run = RunDir(shutil.copytree(run_dir, tmp_path / "run"))
    loaded = load(run, "final", device=device)
    objective = run_objective(loaded.model, loaded.config, loaded.task, FAST)
    centers = [llc_driver.center_weights(run, c, objective) for c in run.checkpoints()]
    whole = estimate_many(objective, centers, FAST)
    ours = llc_over_checkpoints(run, settings=FAST, progress=False, device=device)["all"]
    for est, mine in zip(whole, ours.values()):
        assert mine["llc"] == est.llc and mine["llc_chains"] == est.llc_chains and mine["init_loss"] == est.init_loss
    heads = restrictions(loaded.model, ["heads"])
    direct = estimate_many(objective, centers, FAST, restrict=heads)  # [c0 h0, c0 h1, c1 h0, ...]
    per_head = llc_over_checkpoints(run, restrict="heads", settings=FAST, progress=False, device=device)
    driven = [per_head[h.name][c.name] for c in run.checkpoints() for h in heads]
    assert [d["llc_chains"] for d in driven] == [e.llc_chains for e in direct]
    assert [d["llc"] for d in driven] == [e.llc for e in direct]


def test_an_earlier_layout_is_refused_in_one_line_and_redo_estimates_again(run_dir, tmp_path, toylens_main):
    import shutil

    run = RunDir(shutil.copytree(run_dir, tmp_path / "run"))
    run.write_json("llc/epoch-0002.json", {"format": "toylens-llc/1", "llc": 1.0})  # the layout before
    with pytest.raises(ToylensError, match="layout of an earlier toylens") as e:
        llc_over_checkpoints(run, settings=FAST, progress=False)
    assert "\n" not in str(e.value) and "--redo" in str(e.value) and "llc/epoch-0002.json" in str(e.value)
    with pytest.raises(ToylensError, match="layout of an earlier toylens"):
        read_estimates(run)
    done = toylens_main("llc", run.path, "--redo", "--checkpoint", "2", *FAST_SET)
    assert done.exit_code == 0, done.stderr
    assert not run.has("llc/epoch-0002.json") and run.has("llc/all/epoch-0002.json")
    assert list(read_estimates(run)) == ["all"]


def _fake(eps: float, gamma: float, flags: list[str], llc: float = 1.0) -> LLCEstimate:
    empty = torch.zeros(1, 1)
    return LLCEstimate(
        llc=llc,
        llc_std=0.1,
        llc_se=0.1,
        llc_chains=[llc],
        llc_half=llc,
        rel_change=0.0,
        converged=True,
        init_loss=0.1,
        train_loss=0.1,
        nbeta=10.0,
        epsilon=eps,
        gamma=gamma,
        acceptance=0.9,
        frac_below_init=0.0,
        drift=0.0,
        warnings=list(flags),
        flags=flags,
        loss_trace=empty,
        accept_trace=empty,
    )


def test_choose_the_largest_step_on_the_plateau_at_the_smallest_gamma():
    grid = [
        _fake(1e-5, 100.0, ["high_acceptance"], 10.0),
        _fake(1e-4, 100.0, [], 10.5),
        _fake(3e-4, 100.0, [], 10.9),
        _fake(1e-3, 100.0, [], 13.0),
        _fake(3e-3, 100.0, ["low_acceptance"]),
        _fake(1e-3, 1000.0, []),
    ]
    assert choose(grid) == 2  # 1e-3 moved λ̂ by 19%: the step-size error shows
    assert choose([_fake(1e-4, 100.0, ["drift"]), _fake(1e-4, 1000.0, ["high_acceptance"])]) == 1
    assert choose([_fake(1e-4, 100.0, [], 5.0), _fake(1e-3, 100.0, [], 9.0)]) == 0  # no plateau: the smallest
    assert choose([_fake(1e-4, 100.0, ["negative"])]) is None


def test_calibrate_writes_the_sweep_and_the_pick(run_dir, device):
    run = RunDir(run_dir)
    (name, cal), *others = calibrate(
        run, "final", epsilons=[1e-5, 1e-4, 10.0], gammas=[100.0], settings=FAST, progress=False, device=device
    ).items()
    assert name == "all" and not others and cal.chosen in (None, 0, 1)
    assert len(cal.estimates) == 3 and [e.epsilon for e in cal.estimates] == [1e-5, 1e-4, 10.0]
    stored = run.read_json("llc/calibration.json")["restrictions"]["all"]
    assert stored["checkpoint"] == "epoch-0002" and len(stored["grid"]) == 3 and stored["chosen"] == cal.chosen
    assert not stored["grid"][2]["usable"]  # a step of 10 diverges
    traces, _ = run.read_tensors("llc/calibration.safetensors")
    assert traces["all.loss.0"].shape == (2, FAST.steps)
    if cal.chosen is None:
        assert not run.has("llc/settings.json")
    else:
        assert load_settings(run).epsilon == cal.estimates[cal.chosen].epsilon


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toylens.cli", *args], capture_output=True, text=True)


FAST_SET = [*sets(chains=2, draws=4, burnin=2, batch_size=8, init_batches=1), "--no-progress"]


def test_cli_llc_and_calibrate(run_dir, tmp_path):
    proc = cli("llc", str(run_dir), "--checkpoint", "0,2", "--set", "seed=3", *FAST_SET)
    assert proc.returncode == 0, proc.stderr
    assert "epoch-0000" in proc.stdout and "epoch-0002" in proc.stdout and "epoch-0001" not in proc.stdout
    proc = cli("llc", "calibrate", str(run_dir), "--epsilons", "1e-5,1e-4", "--gammas", "100", "--no-write", *FAST_SET)
    assert proc.returncode in (0, 1), proc.stderr
    assert "all: calibration on epoch-0002" in proc.stdout and "1e-05" in proc.stdout
    bad = cli("llc", str(run_dir), "--checkpoint", "9", *FAST_SET)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
    assert "no checkpoint 'epoch-0009'" in bad.stderr
    bad = cli("llc", str(run_dir), "--set", "chains=0")
    assert bad.returncode == 2 and "chains" in bad.stderr
    bad = cli("llc", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "not found" in bad.stderr
    assert cli("llc", "--help").returncode == 0 and cli("llc", "estimate", "--help").returncode == 0
