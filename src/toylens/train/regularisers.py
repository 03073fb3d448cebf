"""What training minimises besides the task loss, defined once: read by the trainer, ensembles and the LLC.

    reg = Regularisers.of(model, cfg.train, cfg.model.act_fn)
    opt = torch.optim.AdamW(reg.param_groups(model), lr=...)       # as `optim.build_optimizer` does
    with model.hooks(reg.l1.fwd_hooks):
        logits = model(tokens)
    loss = task.loss(logits, batch) + reg.l1.take()

A run has two regularisers:

- weight decay, coefficient `train.weight_decay`, on the parameters `decays` picks under
  `train.weight_decay_on`. AdamW applies it decoupled, to the weights rather than through the
  gradient; the LLC can sample it as the term (c/2)·||w||² (`decay_coefficients`);
- the L1 penalty on named activations (`train.l1`), added to the task loss (`L1Penalty`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from toylens.config import L1Config, TrainConfig

MATRICES = frozenset({"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U"})
EMBEDDINGS = frozenset({"W_E", "W_pos"})


def decays(param_name: str, on: str) -> bool:
    """Whether weight decay applies to a parameter under `train.weight_decay_on`."""
    leaf = param_name.rsplit(".", 1)[-1]
    return on == "all" or leaf in MATRICES or (on == "embeddings" and leaf in EMBEDDINGS)


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


@dataclass
class Regularisers:
    """A run's regularisers: what its training adds to the task loss."""

    weight_decay: float
    """AdamW's decoupled weight decay c (`train.weight_decay`)."""
    decayed: list[str]
    """The parameters it applies to, in the model's order (`train.weight_decay_on`, see `decays`)."""
    l1: L1Penalty
    """The L1 penalty on activations (`train.l1`); no hooks when its coef is 0."""

    @classmethod
    def of(cls, model: nn.Module, train: TrainConfig, act_fn: str | None = None) -> Regularisers:
        """The regularisers `train` sets for `model` (`act_fn`: its MLP activation, see `L1Penalty`)."""
        decayed = [n for n, _ in model.named_parameters() if decays(n, train.weight_decay_on)]
        return cls(train.weight_decay, decayed, L1Penalty(train.l1, act_fn))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW's parameter groups: the decayed parameters at `weight_decay`, then the rest at 0
        (an empty group left out). The order is part of every saved optimiser state."""
        named, decayed = list(model.named_parameters()), set(self.decayed)
        groups = [
            {"params": [p for n, p in named if n in decayed], "weight_decay": self.weight_decay},
            {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def decay_coefficients(self, coef: float) -> dict[str, float]:
        """{parameter name: coef} on the decayed parameters, for the decay as a (c/2)·||w||² term
        (the LLC's; AdamW's decoupled decay has no such term); empty when coef is 0."""
        return {n: coef for n in self.decayed} if coef else {}
