"""Metrics for patching and ablation: per-example numbers from logits, higher = more like clean.

Each metric is called on logits `[..., batch, pos, d_vocab_out]` and returns `[..., batch]`, so
the patching engine can score a whole stack of patched copies of the batch in one call. All three
measure how much the model still produces the *clean* answers:

- `LogitDiff`: logit of the clean answer minus logit of the corrupted answer, averaged over the
  positions where the two answers differ (the field's favourite: linear in the residual stream).
- `NegLoss`: minus the cross-entropy of the clean targets (so that higher is better, like the others).
- `Accuracy`: fraction of target positions where the clean answer is the top logit.

Patching results are reported raw and normalised, (m - m_corrupted) / (m_clean - m_corrupted), so
1 = as clean and 0 = as corrupted.

`metric.positions` marks the positions a metric reads and `metric.at(index)` restricts it to some
positions, so the patching engine only unembeds where the metric looks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from toylens.errors import ToylensError
from toylens.tasks.base import IGNORE


def _masked_mean(values: Float[Tensor, "... batch pos"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "... batch"]:
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def _take(logits: Tensor, tokens: Tensor) -> Tensor:
    """logits[..., b, p, tokens[b, p]] (ignored targets read token 0 and are masked later)."""
    index = tokens.clamp_min(0).expand(*logits.shape[:-1]).unsqueeze(-1)
    return logits.gather(-1, index).squeeze(-1)


@dataclass
class LogitDiff:
    """Clean-answer logit minus corrupted-answer logit where the answers differ."""

    correct: Int[Tensor, "batch pos"]
    wrong: Int[Tensor, "batch pos"]
    name = "logit_diff"
    description = "logit(clean answer) - logit(corrupted answer), mean over positions where they differ"

    def __post_init__(self) -> None:
        self.where = (self.correct != IGNORE) & (self.wrong != IGNORE) & (self.correct != self.wrong)

    def __call__(self, logits: Float[Tensor, "... batch pos vocab"]) -> Float[Tensor, "... batch"]:
        return _masked_mean(_take(logits, self.correct) - _take(logits, self.wrong), self.where)

    def to(self, device: torch.device) -> LogitDiff:
        return LogitDiff(self.correct.to(device), self.wrong.to(device))

    @property
    def positions(self) -> Bool[Tensor, "batch pos"]:
        return self.where

    def at(self, index: Tensor) -> LogitDiff:
        return LogitDiff(self.correct[:, index], self.wrong[:, index])


@dataclass
class NegLoss:
    """Minus the mean cross-entropy of the clean targets."""

    targets: Int[Tensor, "batch pos"]
    name = "neg_loss"
    description = "minus the cross-entropy (nats) of the clean targets, mean over target positions"

    def __call__(self, logits: Float[Tensor, "... batch pos vocab"]) -> Float[Tensor, "... batch"]:
        # at least float32 (a bf16 run's logits), float64 kept (a float64 reference stays one)
        logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        return _masked_mean(_take(logp, self.targets), self.targets != IGNORE)

    def to(self, device: torch.device) -> NegLoss:
        return NegLoss(self.targets.to(device))

    @property
    def positions(self) -> Bool[Tensor, "batch pos"]:
        return self.targets != IGNORE

    def at(self, index: Tensor) -> NegLoss:
        return NegLoss(self.targets[:, index])


@dataclass
class Accuracy:
    """Fraction of target positions whose top logit is the clean target."""

    targets: Int[Tensor, "batch pos"]
    name = "accuracy"
    description = "fraction of target positions where the clean answer is the top logit"

    def __call__(self, logits: Float[Tensor, "... batch pos vocab"]) -> Float[Tensor, "... batch"]:
        right = (logits.argmax(-1) == self.targets).to(logits.dtype)
        return _masked_mean(right, self.targets != IGNORE)

    def to(self, device: torch.device) -> Accuracy:
        return Accuracy(self.targets.to(device))

    @property
    def positions(self) -> Bool[Tensor, "batch pos"]:
        return self.targets != IGNORE

    def at(self, index: Tensor) -> Accuracy:
        return Accuracy(self.targets[:, index])


Metric = LogitDiff | NegLoss | Accuracy

METRICS = ("logit_diff", "neg_loss", "accuracy")


def make_metric(name: str, answers: Tensor, wrong: Tensor | None = None) -> Metric:
    """A metric by name, from the clean answers (and the corrupted answers, for logit_diff)."""
    if name == "logit_diff":
        if wrong is None:
            raise ToylensError(
                "logit_diff needs corrupted answers, which this corruption does not change; use neg_loss or accuracy"
            )
        return LogitDiff(answers, wrong)
    if name == "neg_loss":
        return NegLoss(answers)
    if name == "accuracy":
        return Accuracy(answers)
    raise ToylensError(f"patch metric {name!r}: expected one of {', '.join(METRICS)}")
