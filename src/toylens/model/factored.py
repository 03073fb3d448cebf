"""FactoredMatrix: a product `A @ B` kept unevaluated, for low-rank circuits such as QK and OV.

A head's QK circuit `W_Q @ W_K^T` and OV circuit `W_V @ W_O` are d_model x d_model matrices of
rank at most d_head; the full circuits `W_E @ QK @ W_E^T` are d_vocab x d_vocab. Keeping the two
factors lets norms, singular values and eigenvalues come from d_head-sized matrices, and builds
the big product only when `.AB` is asked for.

    qk = model.QK[1, 0]                  # layer 1, head 0: FactoredMatrix [d_model, d_model]
    full = model.W_E @ qk @ model.W_E.T  # still factored: [d_vocab, d_vocab], inner dim d_head
    full.norm(), full.S, full.eigenvalues, full[:, :5, :5].AB

Leading dimensions (layer, head, ...) broadcast like matmul's; indexing selects over them, and
`rows`/`cols` select rows of A and columns of B.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


class FactoredMatrix:
    """`A @ B` with A [..., ldim, mdim] and B [..., mdim, rdim], never multiplied out unless asked."""

    def __init__(self, A: Float[Tensor, "... ldim mdim"], B: Float[Tensor, "... mdim rdim"]):
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"inner dimensions differ: A {tuple(A.shape)}, B {tuple(B.shape)}")
        lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.expand(*lead, *A.shape[-2:])
        self.B = B.expand(*lead, *B.shape[-2:])

    # --- shape ----------------------------------------------------------------------------
    @property
    def ldim(self) -> int:
        return self.A.shape[-2]

    @property
    def mdim(self) -> int:
        return self.A.shape[-1]

    @property
    def rdim(self) -> int:
        return self.B.shape[-1]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.A.shape[:-1], self.rdim))

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim})"

    # --- evaluation -----------------------------------------------------------------------
    @property
    def AB(self) -> Tensor:
        """The product, built in full: [..., ldim, rdim]."""
        return self.A @ self.B

    @property
    def BA(self) -> Tensor:
        """The small product B @ A: [..., mdim, mdim] (needs a square matrix)."""
        self._need_square("BA")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.mT, self.A.mT)

    # --- algebra --------------------------------------------------------------------------
    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix:
        if isinstance(other, FactoredMatrix):
            inner = self.B @ other.A  # [..., m1, m2]: keep the smaller of the two inner sizes
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, inner @ other.B)
            return FactoredMatrix(self.A @ inner, other.B)
        if other.ndim == 1:
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)  # type: ignore[return-value]
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix:
        if other.ndim == 1:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)  # type: ignore[return-value]
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar: float) -> FactoredMatrix:
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    # --- selection ------------------------------------------------------------------------
    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index the leading (layer, head, ...) dimensions of both factors."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        n_lead = self.A.ndim - 2
        if len([i for i in idx if i is not Ellipsis and i is not None]) > n_lead:
            raise IndexError(f"{len(idx)} indices for {n_lead} leading dimensions; use rows()/cols() for the matrix")
        return FactoredMatrix(self.A[idx], self.B[idx])

    def rows(self, index: Tensor | slice) -> FactoredMatrix:
        """The rows `index` of the product (rows of A)."""
        return FactoredMatrix(self.A[..., index, :], self.B)

    def cols(self, index: Tensor | slice) -> FactoredMatrix:
        """The columns `index` of the product (columns of B)."""
        return FactoredMatrix(self.A, self.B[..., :, index])

    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))

    # --- spectra and norms, from the small side -------------------------------------------
    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """Compact SVD of the product: U [..., ldim, r], S [..., r], Vh [..., r, rdim], r = mdim.

        With A = Qa Ra and B^T = Qb Rb (reduced QR), A B = Qa (Ra Rb^T) Qb^T, so only the
        mdim x mdim core Ra Rb^T is decomposed.
        """
        Qa, Ra = torch.linalg.qr(self.A)
        Qb, Rb = torch.linalg.qr(self.B.mT)
        Uc, S, Vhc = torch.linalg.svd(Ra @ Rb.mT, full_matrices=False)
        return Qa @ Uc, S, Vhc @ Qb.mT

    @property
    def S(self) -> Tensor:
        """Singular values of the product, largest first: [..., min(mdim, ldim, rdim)]."""
        _, Ra = torch.linalg.qr(self.A)
        _, Rb = torch.linalg.qr(self.B.mT)
        return torch.linalg.svdvals(Ra @ Rb.mT)

    def norm(self) -> Tensor:
        """Frobenius norm of the product: ||AB||^2 = sum((A^T A) * (B B^T)), mdim x mdim only."""
        gram = (self.A.mT @ self.A) * (self.B @ self.B.mT)
        return gram.sum((-2, -1)).clamp_min(0).sqrt()

    @property
    def eigenvalues(self) -> Tensor:
        """The mdim eigenvalues of the product that can be non-zero (those of B @ A), complex."""
        return torch.linalg.eigvals(self.BA)

    def _need_square(self, what: str) -> None:
        if self.ldim != self.rdim:
            raise ValueError(f"{what} needs a square product; this one is {self.ldim} x {self.rdim}")
