"""Direct logit attribution and the logit lens.

Direct logit attribution (DLA) splits the logit difference "correct answer minus baseline" at
every target position into what each residual-stream part writes directly (through ln_final,
linearised with the cached scale, and W_U): the embeddings, each head, each attention bias, each
MLP, plus one constant (ln_final.b and b_U). The parts add up exactly to the model's own logit
difference. The baseline is the mean logit over the output vocabulary (default), or a given wrong
answer per position (e.g. the corrupted run's answer).

The logit lens reads the residual stream after each layer as if it were the last (same ln_final
convention, plus its bias and b_U) and reports loss, accuracy and the correct-answer logit (minus
the mean logit) per layer: where along the depth the answer becomes readable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from toylens.analysis.residual import (
    accumulated_resid,
    apply_ln_final,
    ln_final_bias,
    needed_hooks,
    residual_components,
)
from toylens.model import ActivationCache, Transformer
from toylens.model import functional as core
from toylens.rundir.results import Result
from toylens.tasks.base import IGNORE


def answer_directions(
    model: Transformer, targets: Int[Tensor, "batch pos"], wrong: Int[Tensor, "batch pos"] | None = None
) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos"]]:
    """Unembedding direction and bias of "target minus baseline" at every position."""
    W_U, b_U = model.W_U.detach(), model.b_U.detach()
    t = targets.clamp_min(0)
    if wrong is None:
        return W_U.T[t] - W_U.mean(1), b_U[t] - b_U.mean()
    w = wrong.clamp_min(0)
    return W_U.T[t] - W_U.T[w], b_U[t] - b_U[w]


def direct_logit_attribution(
    model: Transformer,
    cache: ActivationCache,
    targets: Int[Tensor, "batch pos"],
    wrong: Int[Tensor, "batch pos"] | None = None,
) -> tuple[list[str], Float[Tensor, "component batch pos"]]:
    """Each part's direct contribution to logit(target) - baseline; the last part is the constant."""
    parts = residual_components(model, cache)
    direction, bias = answer_directions(model, targets, wrong)
    through_ln = apply_ln_final(model, cache, parts.stack)
    dla = (through_ln * direction).sum(-1)
    constant = (ln_final_bias(model) * direction).sum(-1) + bias
    return parts.labels + ["bias (ln_final.b, b_U)"], torch.cat([dla, constant[None]])


@dataclass
class LogitAttribution(Result):
    """Mean direct logit attribution per component, overall and per position."""

    labels: list[str]
    total: Tensor
    by_pos: Tensor
    pos_labels: list[str]
    baseline: str
    n_examples: int
    axes = {"total": ("component",), "by_pos": ("component", "pos")}


@dataclass
class LogitLens(Result):
    """Loss, accuracy and correct-answer logit when reading out after each layer."""

    labels: list[str]
    loss: Tensor
    accuracy: Tensor
    correct_logit: Tensor
    n_examples: int
    axes = {"loss": ("layer",), "accuracy": ("layer",), "correct_logit": ("layer",)}


def _masked_means(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over (batch, pos) where mask, and per position over the batch (NaN if none)."""
    m = mask.to(values.dtype)
    total = (values * m).sum((-2, -1)) / m.sum().clamp_min(1)
    by_pos = (values * m).sum(-2) / m.sum(0)
    return total, by_pos


@torch.no_grad()
def logit_attribution(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch pos"],
    wrong: Int[Tensor, "batch pos"] | None = None,
    pos_labels: list[str] | None = None,
) -> LogitAttribution:
    """Direct logit attribution averaged over the target positions of `tokens`."""
    device = next(model.parameters()).device
    tokens, targets = tokens.to(device), targets.to(device)
    _, cache = model.run_with_cache(tokens, names_filter=needed_hooks(model))
    labels, dla = direct_logit_attribution(model, cache, targets, None if wrong is None else wrong.to(device))
    mask = targets != IGNORE
    if wrong is not None:
        mask &= (wrong.to(device) != IGNORE) & (wrong.to(device) != targets)
    total, by_pos = _masked_means(dla, mask)
    baseline = "mean logit over the output vocabulary" if wrong is None else "the corrupted input's answer"
    return LogitAttribution(
        labels=labels,
        total=total.cpu(),
        by_pos=by_pos.cpu(),
        pos_labels=pos_labels or [str(i) for i in range(tokens.shape[1])],
        baseline=baseline,
        n_examples=len(tokens),
    )


@torch.no_grad()
def logit_lens(model: Transformer, tokens: Int[Tensor, "batch pos"], targets: Int[Tensor, "batch pos"]) -> LogitLens:
    """Read the residual stream out after each layer (see the module docstring)."""
    device = next(model.parameters()).device
    tokens, targets = tokens.to(device), targets.to(device)
    _, cache = model.run_with_cache(tokens, names_filter=needed_hooks(model))
    resid = accumulated_resid(model, cache)
    logits = core.unembed(apply_ln_final(model, cache, resid.stack) + ln_final_bias(model), model.W_U, model.b_U)
    mask = targets != IGNORE
    n = mask.sum().clamp_min(1)
    logp = logits.log_softmax(-1)
    t = targets.clamp_min(0)
    nll = -logp.gather(-1, t.expand(len(logits), *t.shape).unsqueeze(-1)).squeeze(-1)
    right = (logits.argmax(-1) == targets).float()
    correct = logits.gather(-1, t.expand(len(logits), *t.shape).unsqueeze(-1)).squeeze(-1) - logits.mean(-1)
    per_layer = [((x * mask).sum((-2, -1)) / n).cpu() for x in (nll, right, correct)]
    return LogitLens(
        labels=resid.labels,
        loss=per_layer[0],
        accuracy=per_layer[1],
        correct_logit=per_layer[2],
        n_examples=len(tokens),
    )
