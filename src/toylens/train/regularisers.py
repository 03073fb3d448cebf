"""Regularisers added to the task loss. Weight decay lives in the optimiser (see `optim`)."""

from __future__ import annotations

import torch
from torch import Tensor

from toylens.config import L1Config


class L1Penalty:
    """coef * mean over tokens of the L1 norm (sum of |a| over the last dim) of each named
    activation, summed over the names. Attach `fwd_hooks` to the forward pass, then `take()`.

        with model.hooks(penalty.fwd_hooks):
            logits = model(tokens)
        loss = task.loss(logits, batch) + penalty.take()
    """

    def __init__(self, cfg: L1Config):
        self.coef = cfg.coef
        self.fwd_hooks = [(name, self._record) for name in cfg.hooks] if cfg.coef > 0 else []
        self._terms: list[Tensor] = []

    def _record(self, act: Tensor, hook: object) -> None:
        self._terms.append(act.abs().sum(-1).mean())

    def take(self) -> Tensor:
        """The penalty for the forward pass just run (0 when off); clears what was recorded."""
        total = torch.stack(self._terms).sum() * self.coef if self._terms else torch.zeros(())
        self._terms = []
        return total
