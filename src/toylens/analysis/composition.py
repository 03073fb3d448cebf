"""Composition scores between heads of different layers, with the random-matrix baseline.

A head in layer l1 writes W_OV1 = W_V W_O into the residual stream; a head in a later layer l2
reads it through its queries, keys or values. With x @ W as the convention (rows are
residual-stream vectors) the composition scores are

    Q-composition  ||W_OV1 @ W_QK2||   / (||W_OV1|| ||W_QK2||)
    K-composition  ||W_OV1 @ W_QK2^T|| / (||W_OV1|| ||W_QK2||)
    V-composition  ||W_OV1 @ W_OV2||   / (||W_OV1|| ||W_OV2||)

(Frobenius norms), computed from the d_head-sized factors. K-composition of a layer-1 induction
head with a layer-0 previous-token head is the signature of an induction circuit.

Baseline: two unrelated matrices also compose a little. For independent, randomly oriented
matrices E||A R B||^2 = ||A||^2 ||B||^2 / d_model, so scores of about 1/sqrt(d_model) mean nothing.
`random_baseline` measures it for the model's own shapes with Gaussian W_Q, W_K, W_V, W_O
(mean and std over samples); only scores well above it indicate composition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from toylens.analysis.circuits import folded_weights, ov_circuit, qk_circuit
from toylens.config import derived
from toylens.model import FactoredMatrix, Transformer
from toylens.rundir.results import Result


def composition_score(left: FactoredMatrix, right: FactoredMatrix) -> Tensor:
    """||L @ R|| / (||L|| ||R||) over broadcast leading dims."""
    return (left @ right).norm() / (left.norm() * right.norm())


@dataclass
class Composition(Result):
    """Q/K/V composition score from (layer1, head1) into (layer2, head2); NaN unless layer1 < layer2."""

    q: Tensor
    k: Tensor
    v: Tensor
    baseline_mean: dict[str, float]
    baseline_std: dict[str, float]
    baseline_formula: float
    baseline_samples: int
    axes = {n: ("layer1", "head1", "layer2", "head2") for n in "qkv"}


@torch.no_grad()
def composition_scores(model: Transformer, baseline_samples: int = 200, seed: int = 0) -> Composition:
    """Every Q/K/V composition score [layer1, head1, layer2, head2] and the random baseline."""
    w = folded_weights(model)
    qk, ov = qk_circuit(w), ov_circuit(w)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    scores = {n: torch.full((n_layers, n_heads, n_layers, n_heads), float("nan")) for n in "qkv"}
    for l1 in range(n_layers):
        for l2 in range(l1 + 1, n_layers):
            src = ov[l1][:, None]  # [h1, 1, d, d] against [1, h2, d, d]
            scores["q"][l1, :, l2] = composition_score(src, qk[l2][None]).cpu()
            scores["k"][l1, :, l2] = composition_score(src, qk[l2].T[None]).cpu()
            scores["v"][l1, :, l2] = composition_score(src, ov[l2][None]).cpu()
    mean, std = random_baseline(model.cfg.d_model, derived(model.cfg.d_head, "d_head"), baseline_samples, seed)
    return Composition(
        q=scores["q"],
        k=scores["k"],
        v=scores["v"],
        baseline_mean=mean,
        baseline_std=std,
        baseline_formula=1 / math.sqrt(model.cfg.d_model),
        baseline_samples=baseline_samples,
    )


def random_baseline(
    d_model: int, d_head: int, samples: int = 200, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of each composition score between heads with i.i.d. Gaussian weights."""
    gen = torch.Generator().manual_seed(seed)

    def heads() -> tuple[FactoredMatrix, FactoredMatrix]:
        W = torch.randn(4, samples, d_model, d_head, generator=gen, dtype=torch.float64)
        return FactoredMatrix(W[0], W[1].mT), FactoredMatrix(W[2], W[3].mT)  # QK, OV (W_O = 4th, transposed)

    qk1, ov1 = heads()
    qk2, ov2 = heads()
    out = {"q": composition_score(ov1, qk2), "k": composition_score(ov1, qk2.T), "v": composition_score(ov1, ov2)}
    return ({n: float(s.mean()) for n, s in out.items()}, {n: float(s.std()) for n, s in out.items()})


def strongest_source(comp: Float[Tensor, "layer1 head1 layer2 head2"], layer: int, head: int) -> tuple[int, int]:
    """The earlier-layer head with the highest score into (layer, head)."""
    scores = comp[:layer, :, layer, head]
    flat = int(scores.flatten().nan_to_num(-1).argmax())
    return divmod(flat, scores.shape[1])
