"""Essential dynamics and stages of a run: the PCA against an independent float64 eigendecomposition
(numpy) of the same checkpoint-by-output matrix, the matrix against a direct forward of each
checkpoint, and the stages file against the curves it was read from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from toylens.development import (
    ED_PATH,
    LLC_CURVE,
    LOSS_CURVE,
    EssentialDynamics,
    development,
    pca,
    stage_boundaries,
)
from toylens.development.essential_dynamics import probe_outputs
from toylens.rundir import RunDir, load
from toylens.rundir.results import load_result
from toylens.train import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = tiny_config(train={"epochs": 4, "log_checkpoints": 4})
    return RunDir(train(cfg, tmp_path_factory.mktemp("dev"), progress=False).run_dir)


def test_pca_matches_numpy_eigendecomposition_of_the_gram_matrix():
    rows = torch.randn(7, 40, generator=torch.Generator().manual_seed(1)) + torch.arange(7.0)[:, None]
    proj, var = pca(rows, k=3)
    x = rows.double().numpy()
    x = x - x.mean(0)
    evals, evecs = np.linalg.eigh(x @ x.T)  # ascending; the Gram matrix's eigenvalues are s²
    evals, evecs = evals[::-1], evecs[:, ::-1]
    np.testing.assert_allclose(var.numpy(), np.clip(evals, 0, None) / evals.sum(), atol=1e-10)
    for c in range(3):
        ref = evecs[:, c] * np.sqrt(evals[c])
        got = proj[:, c].numpy()
        assert min(np.abs(got - ref).max(), np.abs(got + ref).max()) < 1e-8  # same up to sign
        assert got[np.abs(got).argmax()] > 0  # the stated sign convention


def test_probe_rows_are_the_log_probs_of_each_checkpoint(tiny_run):
    ckpts = tiny_run.checkpoints()
    rows, loss, text = probe_outputs(tiny_run, ckpts, 8, 0, "cpu")
    assert rows.shape[0] == len(ckpts) and "8 examples" in text
    split = load(tiny_run, ckpts[0].name, "cpu").task
    test = split.splits[split.eval_splits[0]]
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:8].sort().values
    batch = test.batch(idx)
    for i in (0, len(ckpts) - 1):  # an independent load of the checkpoint, one forward
        model = load(tiny_run, ckpts[i].name, "cpu").model
        logits = model(batch.tokens).double()
        mask = batch.targets != -100
        ref = torch.log_softmax(logits, -1)[mask]
        torch.testing.assert_close(rows[i], ref.flatten().float(), atol=1e-5, rtol=1e-5)
        ce = torch.nn.functional.cross_entropy(logits[mask], batch.targets[mask])
        assert loss[i].item() == pytest.approx(ce.item(), rel=1e-9)


def test_development_saves_trajectory_and_stages(tiny_run):
    ed, st = development(tiny_run, n_probe=8, device="cpu")
    again = load_result(tiny_run, ED_PATH)
    assert isinstance(again, EssentialDynamics) and again.checkpoints == [c.name for c in tiny_run.checkpoints()]
    torch.testing.assert_close(again.projections, ed.projections)
    assert ed.explained_variance.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert ed.projections.shape == (len(ed.checkpoints), min(5, len(ed.checkpoints)))
    assert LOSS_CURVE in st.curves and LLC_CURVE not in st.curves  # no `toylens llc` on this run
    c = st.curves[LOSS_CURVE]
    assert c["values"] == pytest.approx(ed.loss.tolist(), rel=1e-6)
    expected = stage_boundaries(LOSS_CURVE, c["checkpoints"], c["steps"], c["values"])
    assert [(b["kind"], b["step"]) for b in st.boundaries] == [(b.kind, b.step) for b in expected]
    assert "log10(1 + step)" in st.smoothing
    # A second call reuses the essential dynamics (same checkpoints, same probe set).
    before = tiny_run.read_bytes(f"{ED_PATH}.json")
    development(tiny_run, n_probe=8, device="cpu")
    assert tiny_run.read_bytes(f"{ED_PATH}.json") == before


def test_cli_development(tiny_run, toylens_main):
    result = toylens_main("development", tiny_run.path, "--probe", "8", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    n = len(tiny_run.checkpoints())
    assert f"essential dynamics of {n} checkpoints (PC1-3 explain" in result.stdout
    assert "stages (Gaussian kernel average in u = log10(1 + step), bandwidth 0.1 decades):" in result.stdout
    bad = toylens_main("development", tiny_run.path, "--probe", "0")
    assert bad.exit_code == 2
