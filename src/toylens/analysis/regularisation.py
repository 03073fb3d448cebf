"""What weight decay and the L1 penalty act on: weight norms per component and MLP sparsity.

`weight_norms(model)`: the Frobenius norm of every weight matrix (per head for attention, per
layer for MLPs), each head's QK and OV circuit norm, and the total L2 norm of the matrices weight
decay shrinks by default.

`activation_sparsity(model, tokens)`: for each MLP layer on data, the fraction of neurons active
per token (pre-activation > 0, i.e. ReLU output non-zero), the mean L1 norm of the activations per
token (sum over neurons of |hook_post|: what `train.l1` penalises), each neuron's firing
frequency, and the fraction of neurons that never fire.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from toylens.model import Transformer, act_name
from toylens.rundir.results import Result


@dataclass
class WeightNorms(Result):
    """Frobenius norms: `norms[name]` per named component; per-head arrays [layer, head]."""

    norms: dict[str, float]
    heads: dict[str, Tensor]
    total_matrices: float
    axes = {"heads": ("layer", "head")}


@torch.no_grad()
def weight_norms(model: Transformer) -> WeightNorms:
    norms: dict[str, float] = {
        "W_E": float(model.W_E.norm()),
        "W_pos": float(model.W_pos.norm()),
        "W_U": float(model.W_U.norm()),
    }
    for l, block in enumerate(model.blocks):
        if not model.cfg.attn_only:
            norms[f"L{l}.W_in"] = float(block.mlp.W_in.norm())
            norms[f"L{l}.W_out"] = float(block.mlp.W_out.norm())
    heads = {name: getattr(model, name).flatten(-2).norm(dim=-1).cpu() for name in ("W_Q", "W_K", "W_V", "W_O")}
    heads["QK"] = model.QK.norm().cpu()
    heads["OV"] = model.OV.norm().cpu()
    matrices = [
        p
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1] in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U")
    ]
    total = float(torch.sqrt(functools.reduce(operator.add, (p.pow(2).sum() for p in matrices))))
    return WeightNorms(norms=norms, heads=heads, total_matrices=total)


@dataclass
class Sparsity(Result):
    """MLP activation statistics per layer over the analysed tokens."""

    fraction_active: Tensor
    l1: Tensor
    dead_fraction: Tensor
    neuron_frequency: Tensor
    n_tokens: int
    axes = {
        "fraction_active": ("layer",),
        "l1": ("layer",),
        "dead_fraction": ("layer",),
        "neuron_frequency": ("layer", "neuron"),
    }


@torch.no_grad()
def activation_sparsity(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> Sparsity | None:
    """Sparsity of every MLP's activations on `tokens` (None for attention-only models)."""
    if model.cfg.attn_only:
        return None
    device = next(model.parameters()).device
    names = [act_name(n, l) for l in range(model.cfg.n_layers) for n in ("pre", "post")]
    _, cache = model.run_with_cache(tokens.to(device), names_filter=names)
    active = torch.stack([(cache["pre", l] > 0).float().flatten(0, 1) for l in range(model.cfg.n_layers)])
    l1 = torch.stack([cache["post", l].abs().sum(-1).mean() for l in range(model.cfg.n_layers)])
    freq = active.mean(1)  # [layer, neuron]
    return Sparsity(
        fraction_active=active.mean((1, 2)).cpu(),
        l1=l1.cpu(),
        dead_fraction=(freq == 0).float().mean(-1).cpu(),
        neuron_frequency=freq.cpu(),
        n_tokens=int(active.shape[1]),
    )
