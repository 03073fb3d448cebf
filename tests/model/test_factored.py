"""FactoredMatrix against the dense float64 product: every method equals its dense counterpart."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from toylens.model import FactoredMatrix


def _factors(lead=(2, 3), l=7, m=4, r=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(*lead, l, m, generator=g, dtype=torch.float64),
        torch.randn(*lead, m, r, generator=g, dtype=torch.float64),
    )


def test_shapes_and_product():
    A, B = _factors(r=9)
    fm = FactoredMatrix(A, B)
    assert fm.shape == (2, 3, 7, 9) and (fm.ldim, fm.mdim, fm.rdim) == (7, 4, 9)
    torch.testing.assert_close(fm.AB, A @ B)
    torch.testing.assert_close(fm.T.AB, (A @ B).mT)
    torch.testing.assert_close(fm[1, 2].AB, A[1, 2] @ B[1, 2])
    torch.testing.assert_close(fm[:, 0].AB, (A @ B)[:, 0])
    torch.testing.assert_close(fm.rows(torch.tensor([0, 3])).cols(slice(2, 5)).AB, (A @ B)[..., [0, 3], 2:5])
    with pytest.raises(IndexError):
        fm[0, 0, 0]


def test_broadcast_leading_dims():
    A = torch.randn(3, 5, 2, dtype=torch.float64)
    B = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(FactoredMatrix(A, B).AB, A @ B)


def test_matmul_keeps_factors():
    A, B = _factors()
    C, D = _factors(m=3, seed=1)
    left, right = FactoredMatrix(A, B), FactoredMatrix(C, D)
    prod = left @ right
    assert isinstance(prod, FactoredMatrix) and prod.mdim == 3
    torch.testing.assert_close(prod.AB, A @ B @ C @ D)
    torch.testing.assert_close((right @ left).AB, C @ D @ A @ B)
    X = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close((X @ left).AB, X @ A @ B)
    torch.testing.assert_close((left @ X.T).AB, A @ B @ X.T)
    v = torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(left @ v, (A @ B) @ v)
    torch.testing.assert_close((2.5 * left).AB, 2.5 * A @ B)


@pytest.mark.parametrize("l,m,r", [(7, 4, 7), (7, 4, 9), (3, 5, 6)])
def test_svd_norm_match_dense(l, m, r):
    A, B = _factors(l=l, m=m, r=r)
    fm, dense = FactoredMatrix(A, B), A @ B
    U, S, Vh = fm.svd()
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh, dense)
    k = min(l, m, r)
    torch.testing.assert_close(fm.S[..., :k], torch.linalg.svdvals(dense)[..., :k])
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(dense))
    torch.testing.assert_close(U.mT @ U, torch.eye(U.shape[-1], dtype=U.dtype).expand_as(U.mT @ U))


def test_eigenvalues_are_the_nonzero_ones_of_the_product():
    A, B = _factors()
    fm = FactoredMatrix(A, B)
    ours = fm.eigenvalues  # [2, 3, 4]
    dense = torch.linalg.eigvals(A @ B)  # [2, 3, 7], three of them ~0
    top = dense.gather(-1, dense.abs().argsort(-1, descending=True)[..., :4])
    key = lambda z: torch.sort(z.real * 1000 + z.imag, dim=-1).values  # noqa: E731
    torch.testing.assert_close(key(ours), key(top), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(ours.sum(-1).real, torch.diagonal(A @ B, dim1=-2, dim2=-1).sum(-1))
    with pytest.raises(ValueError):
        _ = FactoredMatrix(*_factors(r=9)).eigenvalues


def test_model_qk_ov():
    model = tiny_model(n_layers=2)
    qk, ov = model.QK, model.OV
    assert qk.shape == (2, 3, 12, 12) and qk.mdim == 5
    torch.testing.assert_close(qk[1, 2].AB, model.blocks[1].attn.W_Q[2] @ model.blocks[1].attn.W_K[2].T)
    torch.testing.assert_close(ov[0, 1].AB, model.blocks[0].attn.W_V[1] @ model.blocks[0].attn.W_O[1])
