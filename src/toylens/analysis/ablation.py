"""Ablations: knock out each head and each MLP neuron in turn and measure the loss change.

Three ways to knock a component out, each replacing its activation on every position:
- zero: by 0;
- mean: by its mean over the dataset, per position (keeps the average signal, removes the
  input-specific part; usually the fairer test);
- resample: by its value on another example of the dataset (a fixed random permutation).

A head is ablated at `hook_z`, a neuron at `mlp.hook_post`. Heads go through the patching engine
with the ablated values as the source and the data itself as the base, so all heads of a layer
are scored in one stacked forward pass. Neurons use the MLP's linearity in its activations to
start each stacked pass after their own block (see `_neuron_values`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from toylens.analysis.metrics import NegLoss
from toylens.analysis.patching import patch_cells, read_positions, rows_per_pass
from toylens.errors import ToylensError
from toylens.model import ActivationCache, Transformer
from toylens.rundir.results import Result

AblationKind = Literal["zero", "mean", "resample"]
KINDS: tuple[AblationKind, ...] = ("zero", "mean", "resample")


@dataclass
class Ablation(Result):
    """Loss change (ablated - unablated, nats) per head and per MLP neuron."""

    kind: str
    base_loss: float
    heads: Tensor
    neurons: Tensor
    n_examples: int
    axes = {"heads": ("layer", "head"), "neurons": ("layer", "neuron")}


def ablation_source(act: Tensor, kind: str, seed: int = 0) -> Tensor:
    """What replaces an activation [batch, ...] under each kind of ablation."""
    if kind == "zero":
        return torch.zeros_like(act[:1])
    if kind == "mean":
        return act.mean(0, keepdim=True)
    if kind == "resample":
        perm = torch.randperm(act.shape[0], generator=torch.Generator().manual_seed(seed))
        return act[perm.to(act.device)]
    raise ToylensError(f"ablation kind {kind!r}: expected one of {', '.join(KINDS)}")


@torch.no_grad()
def ablate(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch pos"],
    kind: str = "mean",
    *,
    neurons: bool = True,
    seed: int = 0,
    max_rows: int | None = None,
) -> Ablation:
    """Ablate every head (and every MLP neuron unless `neurons=False`) on this data, one at a time."""
    if kind not in KINDS:
        raise ToylensError(f"ablation kind {kind!r}: expected one of {', '.join(KINDS)}")
    device = next(model.parameters()).device
    tokens, metric = tokens.to(device), NegLoss(targets.to(device))
    logits, cache = model.run_with_cache(tokens)
    base = -float(metric(logits).mean())

    def loss_change(activation: str, axis: str) -> Tensor:
        values = patch_cells(
            model,
            cache,
            logits,
            lambda l: ablation_source(cache[activation, l], kind, seed),
            metric,
            activation,
            (axis,),
            max_rows=max_rows,
        )
        return (-values - base).cpu()

    heads = loss_change("z", "head")
    if neurons and not model.cfg.attn_only:
        per_layer = [
            _neuron_values(model, cache, l, ablation_source(cache["post", l], kind, seed), metric, max_rows)
            for l in range(model.cfg.n_layers)
        ]
        neuron_change = (-torch.stack(per_layer) - base).cpu()
    else:
        neuron_change = torch.zeros(model.cfg.n_layers, 0)
    return Ablation(kind=kind, base_loss=base, heads=heads, neurons=neuron_change, n_examples=len(tokens))


def _neuron_values(
    model: Transformer, cache: ActivationCache, layer: int, source: Tensor, metric: NegLoss, max_rows: int | None
) -> Tensor:
    """The metric with each neuron of one MLP replaced by `source`, for all neurons.

    An MLP's output is linear in its activations, so replacing neuron n adds
    (source_n - post_n) * W_out[n] to this block's output and nothing else: the stacked copies
    start from the block's cached resid_post plus that change, at the next layer, instead of
    recomputing this block's attention and MLP once per neuron.
    """
    post = cache["post", layer]  # [batch, pos, d_mlp]
    delta = source - post
    W_out = model.blocks[layer].mlp.W_out.detach()
    resid = cache["resid_post", layer]
    per_pass = max(1, (max_rows or rows_per_pass(model, resid.shape[1])) // len(resid))
    read = read_positions(metric)
    values = []
    for idx in torch.arange(post.shape[-1], device=post.device).split(per_pass):
        change = delta[:, :, idx].permute(2, 0, 1)[..., None] * W_out[idx][:, None, None, :]  # [c, b, p, d_model]
        logits = model(residual=(resid + change).flatten(0, 1), start_at_layer=layer + 1, positions=read)
        values.append(metric.at(read)(logits.view(len(idx), len(resid), len(read), -1)).mean(-1))
    return torch.cat(values)
