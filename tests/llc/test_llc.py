"""The LLC estimator against closed forms: quadratic and polynomial potentials, reduced-rank
regression (Aoyagi & Watanabe 2005), deep linear networks (Aoyagi 2024); invariances; seeding;
the MALA diagnostic and the batched objective against plain per-model loops."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Point
from torch import nn

from toylens.errors import ToylensError
from toylens.llc import LLCSettings, Objective, estimate_llc, estimate_many
from toylens.llc.sampler import MinibatchDraws, RowSettings, _mala_acceptance


class Linear2(nn.Module):
    """y = B A x: reduced-rank regression, i.e. a two-layer deep linear network."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        super().__init__()
        self.A, self.B = nn.Parameter(A.clone()), nn.Parameter(B.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T @ self.B.T


def mse(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def rrr_lambda(M: int, H: int, N: int, r: int) -> float:
    """Learning coefficient of reduced-rank regression (Aoyagi & Watanabe 2005), input M, hidden
    H, output N, true rank r; a two-layer deep linear network is the same model."""
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        odd = (M + H + N + r) % 2
        return (2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2 + odd) / 8
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    return M * N / 2


def fitted_rrr(
    M: int, H: int, N: int, rank: int, n: int = 1000, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[Linear2, tuple]:
    """Data y = T x + noise (T of the given rank) and the rank-H least-squares fit, balanced
    between the two factors (B = U S^1/2, A = S^1/2 V^T); all computed on the CPU, then the model
    moved to `device` (the data stays on the CPU: the objective moves each minibatch)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, M, generator=g, dtype=torch.float64)
    teacher = torch.zeros(N, M, dtype=torch.float64)
    if rank:
        teacher = torch.randn(N, rank, generator=g, dtype=torch.float64) @ torch.randn(
            rank, M, generator=g, dtype=torch.float64
        )
    y = x @ teacher.T + torch.randn(n, N, generator=g, dtype=torch.float64)
    ols = torch.linalg.lstsq(x, y).solution.T  # [N, M]
    top = torch.linalg.svd(x @ ols.T, full_matrices=False).Vh[:H].T  # best rank-H output subspace
    u, s, vh = torch.linalg.svd(top @ top.T @ ols)
    return Linear2(s[:H].sqrt()[:, None] * vh[:H], u[:, :H] * s[:H].sqrt()).to(device), (x, y)


# ------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("gamma, expected", [(0.0, 5.013), (100.0, 2.513)])
def test_quadratic_potential(gamma, expected, device):
    # nβ·K = (nβ/2)||w||², d = 10: discrete-time SGLD has variance 1/(a(1 - εa/4)), a = nβ + γ.
    d, nbeta, eps = 10, 100.0, 1e-4
    exact = (d / 2) * nbeta / ((nbeta + gamma) * (1 - eps * (nbeta + gamma) / 4))
    assert exact == pytest.approx(expected, abs=1e-3)
    s = LLCSettings(epsilon=eps, gamma=gamma, nbeta=nbeta, chains=1000, burnin=500, draws=500)
    est = estimate_llc(Point(d).to(device), lambda m, b: 0.5 * m().pow(2).sum(), None, s)
    assert est.llc == pytest.approx(exact, rel=0.03)
    assert est.llc_se < 0.01 * exact and est.nbeta == nbeta


def test_polynomial_potential(device):
    # nβ·K = w1^4 + w2^6 at γ = 0: λ = 1/4 + 1/6 (exactly E[U] under exp(-U) for these monomials).
    s = LLCSettings(epsilon=5e-3, gamma=0.0, nbeta=1.0, chains=1000, burnin=500, draws=1000)
    est = estimate_llc(Point(2).to(device), lambda m, b: m()[0] ** 4 + m()[1] ** 6, None, s)
    assert est.llc == pytest.approx(1 / 4 + 1 / 6, rel=0.10)


def least_squares_potential(model: Linear2, data: tuple) -> tuple:
    """The same full-batch MSE as `mse` on `data`, from sufficient statistics: with F = P^T the
    network's matrix, L = (tr(F^T Sxx F) - 2 tr(F^T Sxy) + tr Syy) / N. A fast loss_fn for many
    chains; `test_sufficient_statistics_path_is_the_data_path` checks the two agree."""
    x, y = (t.to(model.A.device) for t in data)
    n, M = x.shape
    sxx, sxy, syy = x.T @ x / n, x.T @ y / n, (y * y).sum() / n
    eye = torch.eye(M, dtype=x.dtype, device=x.device)

    def loss(call, batch):
        F = call(eye)  # [M, N]
        return ((F * (sxx @ F)).sum() - 2 * (F * sxy).sum() + syy) / y.shape[1]

    return loss


# n = 1000 examples, full batch: nβ = n / ln n. Long enough chains that λ̂ is settled to ~2%.
LINEAR_SETTINGS = LLCSettings(
    epsilon=3e-4, gamma=1.0, nbeta=1000 / math.log(1000), chains=64, burnin=1000, draws=1000, mala_every=0
)


def test_sufficient_statistics_path_is_the_data_path(device):
    model, data = fitted_rrr(5, 3, 5, rank=0, device=device)
    s = LINEAR_SETTINGS.model_copy(update={"chains": 3, "burnin": 5, "draws": 30, "nbeta": None, "batch_size": None})
    via_data = estimate_llc(model, mse, data, s)
    via_stats = estimate_llc(
        model, least_squares_potential(model, data), None, s.model_copy(update={"nbeta": via_data.nbeta})
    )
    assert via_data.nbeta == pytest.approx(1000 / math.log(1000))
    assert torch.allclose(via_data.loss_trace, via_stats.loss_trace, rtol=1e-5)
    assert via_data.llc == pytest.approx(via_stats.llc, rel=1e-4)


@pytest.mark.parametrize("M, H, N, expected", [(5, 3, 5, 6.5), (4, 3, 8, 6.0)])
def test_reduced_rank_regression(M, H, N, expected, device):
    assert rrr_lambda(M, H, N, 0) == expected
    model, data = fitted_rrr(M, H, N, rank=0, device=device)
    est = estimate_llc(model, least_squares_potential(model, data), None, LINEAR_SETTINGS)
    assert est.llc == pytest.approx(expected, rel=0.20)


def test_deep_linear_network_ordering():
    # Widths [10, 10, 10]: λ = 37.5, 42, 50 for teacher rank 0, 2, 10 (Aoyagi 2024).
    expected = {0: 37.5, 2: 42.0, 10: 50.0}
    found = {}
    for rank, lam in expected.items():
        assert rrr_lambda(10, 10, 10, rank) == lam
        model, data = fitted_rrr(10, 10, 10, rank=rank, seed=rank)
        found[rank] = estimate_llc(model, least_squares_potential(model, data), None, LINEAR_SETTINGS).llc
        assert found[rank] == pytest.approx(lam, rel=0.25), found
    assert found[0] < found[2] < found[10], found


def test_rescaling_a_deep_linear_network():
    # (A, B) -> (2A, B/2) computes the same function; the LLC is a property of the function's
    # neighbourhood, so the estimate must barely move.
    model, data = fitted_rrr(10, 10, 10, rank=2, seed=2)
    loss = least_squares_potential(model, data)
    base = estimate_llc(model, loss, None, LINEAR_SETTINGS).llc
    with torch.no_grad():
        model.A.mul_(2.0)
        model.B.div_(2.0)
    assert estimate_llc(model, loss, None, LINEAR_SETTINGS).llc == pytest.approx(base, rel=0.10)


# ------------------------------------------------------------------------- sampler mechanics


def test_same_seed_is_bit_identical_and_batching_keeps_random_streams(device):
    model, data = fitted_rrr(4, 2, 3, rank=1, n=200, device=device)
    s = LLCSettings(epsilon=3e-4, gamma=10.0, batch_size=32, chains=3, burnin=5, draws=20, mala_every=3, seed=7)
    a = estimate_llc(model, mse, data, s)
    b = estimate_llc(model, mse, data, s)
    assert torch.equal(a.loss_trace, b.loss_trace) and torch.equal(a.accept_trace, b.accept_trace)
    assert a.llc == b.llc
    other = estimate_llc(model, mse, data, s.model_copy(update={"seed": 8}))
    assert not torch.equal(a.loss_trace, other.loss_trace)
    # Two centres sampled together: the first one sees the same minibatches and noise as alone.
    objective = Objective(model, mse, data)
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    w1 = {k: v * 1.1 for k, v in w0.items()}
    together = estimate_many(objective, [w0, w1], s)
    assert torch.allclose(together[0].loss_trace, a.loss_trace, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(together[1].loss_trace, a.loss_trace)


def test_chains_draw_their_own_minibatches():
    draws = MinibatchDraws(seed=0, blocks=2, chains=3, n_data=1000, batch_size=16)
    idx = draws.indices()
    assert idx.shape == (6, 16)
    assert len({tuple(r.tolist()) for r in idx[:3]}) == 3  # chains of one estimate differ
    # Every estimate (block) has its own stream from the same seed: common random numbers, and
    # the same draws whatever else is sampled alongside.
    assert torch.equal(idx[:3], idx[3:])
    assert torch.equal(idx[:3], MinibatchDraws(0, 1, 3, 1000, 16).indices())
    assert MinibatchDraws(0, 1, 3, 1000, None).indices() is None  # full batch


def test_batched_objective_matches_a_loop_over_models(device):
    model, data = fitted_rrr(4, 2, 3, rank=1, n=100, device=device)
    objective = Objective(model, mse, data)
    gen = torch.Generator().manual_seed(1)
    w = {
        k: v.detach() + 0.1 * torch.randn(3, *v.shape, generator=gen, dtype=v.dtype).to(device)
        for k, v in model.named_parameters()
    }
    idx = torch.randint(100, (3, 8), generator=gen)
    got = objective(w, idx).cpu()
    for r in range(3):  # the reference on the CPU, in float64
        ref = Linear2(w["A"][r].cpu(), w["B"][r].cpu())
        x, y = data[0][idx[r]], data[1][idx[r]]
        assert float(got[r]) == pytest.approx(float(mse(ref, (x, y)).detach()), rel=1e-12)


def test_mala_acceptance_matches_brute_force():
    # A 2-D Gaussian potential: compare with a direct float64 evaluation of the MALA ratio.
    torch.manual_seed(0)
    h = torch.tensor([3.0, 0.5], dtype=torch.float64)

    def loss(params, idx):
        return 0.5 * (h * params["w"].pow(2)).sum(1)

    rows = RowSettings(
        epsilon=torch.tensor([0.05, 0.3], dtype=torch.float64),
        gamma=torch.tensor([2.0, 0.0], dtype=torch.float64),
        nbeta=torch.tensor([4.0, 4.0], dtype=torch.float64),
    )
    center = {"w": torch.zeros(2, 2, dtype=torch.float64)}
    w = {"w": torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)}
    new = {"w": torch.tensor([[0.25, -0.1], [0.3, 0.2]], dtype=torch.float64)}

    def U(x, g, nb):
        return nb * 0.5 * (h * x * x).sum() + 0.5 * g * (x * x).sum()

    def grad_U(x, g, nb):
        return nb * h * x + g * x

    drift = {"w": torch.stack([grad_U(w["w"][r], rows.gamma[r], rows.nbeta[r]) for r in range(2)])}
    got = _mala_acceptance(loss, None, w, loss(w, None), drift, new, center, rows, None)
    for r in range(2):
        eps, g, nb = float(rows.epsilon[r]), float(rows.gamma[r]), float(rows.nbeta[r])
        x, y = w["w"][r], new["w"][r]
        log_q_fwd = -((y - x + eps / 2 * grad_U(x, g, nb)) ** 2).sum() / (2 * eps)
        log_q_back = -((x - y + eps / 2 * grad_U(y, g, nb)) ** 2).sum() / (2 * eps)
        expected = min(1.0, math.exp(U(x, g, nb) - U(y, g, nb) + log_q_back - log_q_fwd))
        assert float(got[r]) == pytest.approx(expected, rel=1e-10)


def test_weight_decay_term_of_the_objective():
    model, data = fitted_rrr(4, 2, 3, rank=1, n=50)
    plain = Objective(model, mse, data)
    decayed = Objective(model, mse, data, decay={"A": 0.3})
    w = {k: v.detach().unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in model.named_parameters()}
    expected = plain(w, None) + 0.5 * 0.3 * model.A.detach().pow(2).sum()
    assert torch.allclose(decayed(w, None), expected)
    with pytest.raises(Exception, match="no parameter named"):
        Objective(model, mse, data, decay={"C": 1.0})


def test_the_weight_decay_setting_is_sampled_and_settings_without_a_run_are_refused(device):
    # settings.weight_decay = c is the one way to add the decay: (c/2)·||w||² on every parameter
    # of a module, which moves L(w*) by exactly that (by hand, float64: ||w*||² = 5.25).
    model = Point(3)
    with torch.no_grad():
        model.w.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    model.to(device)
    s = LLCSettings(epsilon=1e-4, gamma=100.0, nbeta=10.0, chains=2, burnin=2, draws=4, mala_every=0)

    def potential(m, b):
        return 0.5 * m().pow(2).sum()

    plain = estimate_llc(model, potential, None, s)
    decayed = estimate_llc(model, potential, None, s.model_copy(update={"weight_decay": 0.3}))
    assert plain.init_loss == plain.train_loss == decayed.train_loss == 0.5 * 5.25
    assert decayed.init_loss == pytest.approx(0.5 * 5.25 + 0.5 * 0.3 * 5.25, rel=1e-12)
    assert decayed.settings["weight_decay"] == 0.3 and not torch.equal(plain.loss_trace, decayed.loss_trace)
    # Null (the run's train.weight_decay) and l1=false (leave the run's penalty out) need a run.
    with pytest.raises(ToylensError, match="weight_decay: null"):
        estimate_llc(model, potential, None, s.model_copy(update={"weight_decay": None}))
    with pytest.raises(ToylensError, match="l1: false"):
        estimate_llc(model, potential, None, s.model_copy(update={"l1": False}))


def test_rmsprop_variant_on_the_quadratic(device):
    # Preconditioning rescales the step per weight; the estimate must still match the closed form
    # to within the discretisation error (a = nβ + γ is the same in every direction here).
    s = LLCSettings(
        epsilon=1e-3, gamma=0.0, nbeta=100.0, chains=500, burnin=1000, draws=1000, precondition="rmsprop", mala_every=10
    )
    est = estimate_llc(Point(10).to(device), lambda m, b: 0.5 * m().pow(2).sum(), None, s)
    assert est.llc == pytest.approx(5.0, rel=0.05)
    assert 0 < est.acceptance <= 1


def test_warnings_for_unhealthy_chains(device):
    # A step far too large for the curvature diverges: the estimate says so instead of a number.
    s = LLCSettings(epsilon=0.5, gamma=0.0, nbeta=100.0, chains=2, burnin=2, draws=10, mala_every=1)
    est = estimate_llc(Point(3).to(device), lambda m, b: 0.5 * m().pow(2).sum(), None, s)
    assert "nonfinite" in est.flags or "low_acceptance" in est.flags
    assert est.warnings and not est.healthy


def test_reuse_freed_memory_on_glibc():
    import platform

    from toylens.memory import reuse_freed_memory

    assert reuse_freed_memory() is (platform.libc_ver()[0] == "glibc")
