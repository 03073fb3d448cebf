"""Attribution patching (AtP): every cell of a patching grid estimated from one backward pass.

Exact activation patching (`toylens.analysis.patching`) runs the corrupted input with one cell of
an activation `a` copied in from the clean run and measures the metric. Attribution patching
replaces each of those runs by the first-order Taylor expansion of the metric around the
corrupted run:

    metric(patched) ~ metric(corrupted) + sum over the cell of (a_clean - a_corrupted) * d metric / d a

with the gradient taken on the corrupted run, as a mean over the batch (the metric the grids
report is the batch mean; the gradient of that mean carries the 1/batch). This is the denoising
direction of the exact patcher (clean into corrupted) and TransformerLens 4.3's
`attribution_patch` convention: a positive estimate means patching the cell towards its clean
value raises the metric. The estimate is exact where the metric is linear in the patched
activation (the last layer's attention or MLP output of a model without a final LayerNorm,
under logit difference) and a ranking heuristic elsewhere (Syed, Rager & Conmy 2023).

Every grid costs one clean forward, one corrupted forward and one backward together, whatever
its size: the corrupted run keeps every patchable activation with its gradient, and each grid
is then a sum of (clean - corrupted) * gradient over the axes the cell spans.

    atp = AttributionPatcher(model, clean_tokens, corrupted_tokens, LogitDiff(clean_answers, wrong_answers))
    grid = atp.head_out()               # AttributionGrid: values, normalized [layer, head]

An `AttributionGrid` is a `PatchGrid` with the same axes, labels and normalisation
((estimate - corrupted) / (clean - corrupted)), so it lies beside the exact grid cell for cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from toylens.analysis.metrics import Accuracy, Metric
from toylens.analysis.patching import ACT_AXES, Patcher, PatchGrid, patchable
from toylens.errors import ToylensError
from toylens.model import ActivationCache, HookPoint, Transformer, act_name
from toylens.model.hooks import NameFilter

# Activations whose gradients the corrupted run keeps. Not the attention scores: their masked
# entries are -inf in both runs, and their difference is undefined.
ATTRIBUTABLE = tuple(a for a in ACT_AXES if a != "attn_scores")


@dataclass
class AttributionGrid(PatchGrid):
    """A patching grid estimated to first order (attribution patching): `values` are
    corrupted + (a_clean - a_corrupted) . d metric / d a at the corrupted run, summed over each
    cell; `normalized` as for `PatchGrid`."""

    method: str = "atp"


class AttributionPatcher(Patcher):
    """A clean/corrupted pair and a differentiable metric, with the corrupted run's gradients;
    each grid (the named variants of `Patcher`) is one contraction, no further forward pass."""

    def _run(self, clean_tokens: Tensor, corrupted_tokens: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.metric, Accuracy):
            raise ToylensError(
                "attribution patching needs a differentiable metric; accuracy is piecewise constant "
                "(its gradient is zero): use logit_diff or neg_loss"
            )
        wanted = lambda name: patchable(name) and name.rsplit(".", 1)[-1] != "hook_attn_scores"  # noqa: E731
        with torch.no_grad():
            clean_logits, self.clean_cache = self.model.run_with_cache(clean_tokens, names_filter=wanted)
        corrupted_logits, self.corrupted_cache, self.gradients = corrupted_gradients(
            self.model, corrupted_tokens, self.metric, wanted
        )
        return clean_logits, corrupted_logits

    def grid(self, activation: str, index_axes: tuple[str, ...]) -> AttributionGrid:
        """Estimate patching every (layer, *index_axes) cell of `activation` from the clean run."""
        self._check(activation)
        if activation not in ATTRIBUTABLE:
            raise ToylensError(f"cannot attribute {activation!r}; attributable: {', '.join(ATTRIBUTABLE)}")
        axes = ACT_AXES[activation]
        if not set(index_axes) <= set(axes):
            raise ToylensError(f"{activation} has axes {axes}; cannot index it by {index_axes}")
        effects = torch.stack(
            [
                contract(
                    self.clean_cache[activation, layer] - self.corrupted_cache[activation, layer],
                    self.gradients[act_name(activation, layer)],
                    axes,
                    index_axes,
                )
                for layer in range(self.model.cfg.n_layers)
            ]
        )
        values = self.corrupted + effects
        return self._result(AttributionGrid, activation, index_axes, values, self.normalize(effects))


def corrupted_gradients(
    model: Transformer, tokens: Int[Tensor, "batch pos"], metric: Metric, names: NameFilter
) -> tuple[Tensor, ActivationCache, dict[str, Tensor]]:
    """One forward pass of `tokens` keeping the activations at the hook points `names` selects,
    and one backward pass of the batch-mean metric to all of them at once.

    Returns the logits (detached), the activations (an `ActivationCache`) and the gradient of
    metric(logits).mean() with respect to each activation, by hook name. Each gradient is the
    total derivative through everything downstream of that hook point. The model's parameters
    get no `.grad`.
    """
    live: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: HookPoint) -> Tensor:
        if not x.requires_grad:  # parameters that need no grad: nothing upstream to lose
            x = x.detach().requires_grad_()
        live[hook.name] = x
        return x

    with torch.enable_grad(), model.hooks([(names, keep)]):
        logits = model(tokens)
        value = metric(logits).mean()
        grads = torch.autograd.grad(value, list(live.values()), allow_unused=True)
    order = {name: i for i, name in enumerate(model.hook_dict)}
    names_in_order = sorted(live, key=order.__getitem__)
    cache = ActivationCache({n: live[n].detach() for n in names_in_order}, model)
    gradients = {name: torch.zeros_like(live[name]) if g is None else g for name, g in zip(live, grads, strict=True)}
    return logits.detach(), cache, gradients


def contract(
    delta: Float[Tensor, "batch ..."],
    grad: Float[Tensor, "batch ..."],
    axes: tuple[str, ...],
    index_axes: tuple[str, ...],
) -> Tensor:
    """(delta * grad) summed over the batch and over every axis of `axes` not in `index_axes`,
    the rest in the order of `index_axes`: each cell's first-order change of the metric."""
    product = (delta * grad).sum(0)  # the gradient of the batch mean already carries 1/batch
    keep = [axes.index(a) for a in index_axes]
    drop = [d for d in range(len(axes)) if d not in keep]
    if drop:  # (sum over an empty list of dims would sum everything)
        product = product.sum(drop)
    left = sorted(keep)  # the kept axes, in the activation's order
    return product.permute([left.index(d) for d in keep])
