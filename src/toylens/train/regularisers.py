"""Regularisers added to the task loss. Weight decay lives in the optimiser (see `optim`)."""

from __future__ import annotations

import functools

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

    def __init__(self, cfg: L1Config, act_fn: str | None = None):
        """`act_fn`: the model's MLP activation. ReLU outputs (`mlp.hook_post`) are >= 0, so their
        norm is a plain sum: the same value and the same gradient (abs's sign is 1 where they are
        positive, and where they are 0 the ReLU passes no gradient back either way), without abs
        and its backward pass."""
        self.coef = cfg.coef
        self._nonnegative = {n for n in cfg.hooks if act_fn == "relu" and n.endswith("mlp.hook_post")}
        self.fwd_hooks = [(name, functools.partial(self._record, name)) for name in cfg.hooks] if cfg.coef > 0 else []
        self._terms: list[Tensor] = []

    def norm(self, name: str, act: Tensor) -> Tensor:
        """The L1 norm over the last dim of activation `name` (one value per token)."""
        return (act if name in self._nonnegative else act.abs()).sum(-1)

    def _record(self, name: str, act: Tensor, hook: object) -> None:
        self._terms.append(self.norm(name, act).mean())

    def take(self) -> Tensor:
        """The penalty for the forward pass just run (0 when off); clears what was recorded."""
        total = torch.stack(self._terms).sum() * self.coef if self._terms else torch.zeros(())
        self._terms = []
        return total
