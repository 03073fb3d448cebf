"""The objective the LLC samples: a loss on stacked weights, one row per chain, plus regularisers.

    objective = run_objective(model, cfg, task, settings)          # a run's training objective
    objective = module_objective(model, loss_fn, (x, y), settings)  # any nn.Module with a loss
    objective(params, idx)    # L per row [rows], params {name: [rows, *shape]}, idx [rows, m] or None

For a run, L is what its training minimised (`toylens.train.regularisers.Regularisers`, the
definition the trainer uses too): the task loss on the training split, plus the L1 activation
penalty (`settings.l1`) and, when `settings.weight_decay` asks for it, the decay as (c/2)·||w||²
on the parameters the run decays. For any other module, L is `loss_fn` (plus the decay term on
every parameter when asked).

`loss_fn(model, batch)` gets a callable that runs the module with one chain's weights and a
minibatch (a tuple of tensors, indexed along dim 0 of `data`), and returns the scalar loss, or a
dict of named scalar terms that are summed ("loss" is reported as the train loss, the others are
regularisers such as "l1"). With `data=None` there is no minibatch and `loss_fn(model, ())` is the
whole potential (closed-form tests).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from operator import add
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from toylens.config import RunConfig
from toylens.errors import ToylensError
from toylens.llc.settings import LLCSettings
from toylens.model import Transformer
from toylens.model.stacked import STACKED_HOOKS, stacked_forward
from toylens.tasks import Batch, Task
from toylens.tasks.base import RestrictedSplit, Split
from toylens.train.regularisers import L1Penalty, Regularisers

LossFn = Callable[[Callable[..., Any], tuple], Tensor | dict[str, Tensor]]
Data = tuple[Tensor, ...] | Split | None
StackedLossFn = Callable[..., dict[str, Tensor]]
# Rows per CPU chunk of a stacked objective: as many as keep one activation of the chunk (a row's
# minibatch x sequence x widest layer) under this many elements, about 3 MB of float32. Measured
# on the sort model (2 cores): 2 rows per chunk 7-8 ms per row and step, 1 row 8-9 ms, all 8 rows
# at once 12.5 ms.
CHUNK_ELEMENTS = 3 << 18


class Objective:
    """The sampled objective L for stacked weights: `loss_fn` on each row's minibatch, plus decay.

    `run_objective` and `module_objective` build one from LLCSettings; the arguments here are
    what they make of the settings."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None,
        data: Data,
        decay: dict[str, float] | None = None,
        stacked_fn: StackedLossFn | None = None,
    ):
        """`decay` ({parameter name: c}) adds the term "weight_decay", (c/2)·||w||² summed over
        them. `stacked_fn(params, *batch)`, if given, computes every row's terms at once from
        stacked parameters and a batch with a leading row axis, in place of vmapping `loss_fn`
        (which may then be None)."""
        if loss_fn is None and (stacked_fn is None or data is None):
            raise ValueError("Objective needs loss_fn, or stacked_fn and data")
        self.model, self.loss_fn, self.data, self.stacked_fn = model, loss_fn, data, stacked_fn
        self.decay = {k: c for k, c in (decay or {}).items() if c}
        unknown = set(self.decay) - {n for n, _ in model.named_parameters()}
        if unknown:
            raise ToylensError(f"decay: no parameter named {sorted(unknown)[0]!r} in the model")
        self.device = next(model.parameters()).device
        self.n_data = None if data is None else len(data) if isinstance(data, Split) else len(data[0])
        self._batched = vmap(self._one)
        self._all: tuple[Tensor, ...] | None = None

    def _one(self, params: dict[str, Tensor], *batch: Tensor) -> dict[str, Tensor]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.model, params, args, kwargs)

        assert self.loss_fn is not None  # __init__: without loss_fn every call goes to stacked_fn
        out = self.loss_fn(call, batch)
        return out if isinstance(out, dict) else {"loss": out}

    def rows_per_chunk(self, m: int | None) -> int | None:
        """Rows to compute together on a CPU (see `CHUNK_ELEMENTS`); None: all rows at once (on
        an accelerator, and for objectives without a stacked transformer forward, whose models
        are small enough that one computation is best)."""
        cfg = getattr(self.model, "cfg", None)
        if self.device.type != "cpu" or self.stacked_fn is None or cfg is None or not self.n_data:
            return None
        pos = self.fetch(torch.zeros(1, 1, dtype=torch.long))[0].shape[-1]
        width = max(cfg.d_model, 3 * cfg.n_heads * cfg.d_head, 0 if cfg.attn_only else cfg.d_mlp, cfg.d_vocab_out)
        return max(1, CHUNK_ELEMENTS // ((m or self.n_data) * pos * width))

    def fetch(self, idx: Tensor) -> tuple[Tensor, ...]:
        """The minibatches for indices [rows, m], as tensors [rows, m, ...] on the model's device."""
        flat = idx.reshape(-1)
        if isinstance(self.data, Split):
            b = self.data.batch(flat)
            parts: tuple[Tensor, ...] = (b.tokens, b.targets)
        else:
            parts = tuple(t[flat] for t in self.data)  # type: ignore[union-attr]
        return tuple(p.reshape(*idx.shape, *p.shape[1:]).to(self.device) for p in parts)

    def everything(self) -> tuple[Tensor, ...]:
        """The whole data set on the model's device (kept after the first call)."""
        if self._all is None:
            self._all = tuple(t[0] for t in self.fetch(torch.arange(self.n_data or 0).unsqueeze(0)))
        return self._all

    def terms(self, params: dict[str, Tensor], idx: Tensor | None) -> dict[str, Tensor]:
        """Each named term of L per row ([rows] each); idx None: the whole data for every row."""
        if self.data is None:
            terms = vmap(lambda p: self._one(p))(params)
        elif idx is None:  # one copy of the data shared by every row
            data = self.everything()
            if self.stacked_fn is not None:
                rows = next(iter(params.values())).shape[0]
                terms = self.stacked_fn(params, *(t.expand(rows, *t.shape) for t in data))
            else:
                terms = vmap(self._one, in_dims=(0,) + (None,) * len(data))(params, *data)
        elif self.stacked_fn is not None:
            terms = self.stacked_fn(params, *self.fetch(idx))
        else:
            terms = self._batched(params, *self.fetch(idx))
        if self.decay:
            terms["weight_decay"] = reduce(
                add, (0.5 * c * params[k].pow(2).flatten(1).sum(1) for k, c in self.decay.items())
            )
        return terms

    def __call__(self, params: dict[str, Tensor], idx: Tensor | None) -> Tensor:
        return sum(self.terms(params, idx).values())  # type: ignore[return-value]


def module_objective(model: nn.Module, loss_fn: LossFn, data: Data, settings: LLCSettings) -> Objective:
    """`loss_fn` on `data`, plus (c/2)·||w||² on every parameter when settings.weight_decay = c.

    There is no run here: no train.weight_decay for weight_decay=null to stand for, and no run
    penalty for l1=false to leave out (loss_fn is the whole objective), so both are errors."""
    if settings.weight_decay is None:
        raise ToylensError(
            "weight_decay: null stands for a run's train.weight_decay, and this model has no run; "
            "give the coefficient (or estimate a run's checkpoint with estimate_loaded)"
        )
    if not settings.l1:
        raise ToylensError(
            "l1: false leaves a run's L1 penalty out, and this model has none: loss_fn is the whole "
            "objective (leave the penalty out of loss_fn instead)"
        )
    decay = {n: settings.weight_decay for n, _ in model.named_parameters()}
    return Objective(model, loss_fn, data, decay)


def sampled_weight_decay(settings: LLCSettings, cfg: RunConfig) -> float:
    """The c of the (c/2)·||w||² term a run's objective samples: settings.weight_decay, or (null) the
    run's train.weight_decay."""
    return cfg.train.weight_decay if settings.weight_decay is None else settings.weight_decay


def run_objective(
    model: Transformer, cfg: RunConfig, task: Task, settings: LLCSettings, data_restrict: str | None = None
) -> Objective:
    """The run's training objective on its train split: the task loss and the run's regularisers
    (`Regularisers`, as the trainer has them), the L1 penalty if settings.l1, the decay as
    (c/2)·||w||² if `sampled_weight_decay` > 0. Every row runs through `stacked_forward` when it
    can record the L1 penalty's hooks; otherwise through vmap, for which `model` is switched to the
    explicit attention path (same outputs).

    With `data_restrict` (one of `task.data_restrictions()`: induction copied/uncopied, sort
    output<i>, lm punctuation/other) the task loss is the mean over that restriction's targets of
    each minibatch only (`RestrictedSplit`); n, and so the default nβ, stays the number of
    training sequences."""
    split = task.splits[task.train_split]
    if data_restrict is not None:
        split = RestrictedSplit(task, split, data_restrict)
    reg = Regularisers.of(model, cfg.train, cfg.model.act_fn)
    decay = reg.decay_coefficients(sampled_weight_decay(settings, cfg))
    penalty = reg.l1 if settings.l1 else None
    hooks = [name for name, _ in penalty.fwd_hooks] if penalty else []
    if all(STACKED_HOOKS.fullmatch(name) for name in hooks):
        return Objective(model, None, split, decay, stacked_fn=_stacked_objective(model, task, penalty))
    model.explicit_attention = True  # vmap has no batching rule for CPU scaled_dot_product_attention

    def loss_fn(call: Any, batch: tuple) -> dict[str, torch.Tensor]:
        tokens, targets = batch
        if penalty is None or not penalty.fwd_hooks:
            return {"loss": task.loss(call(tokens), Batch(tokens, targets))}
        with model.hooks(penalty.fwd_hooks):
            logits = call(tokens)
        return {"loss": task.loss(logits, Batch(tokens, targets)), "l1": penalty.take()}

    return Objective(model, loss_fn, split, decay)


def _stacked_objective(model: Transformer, task: Task, penalty: L1Penalty | None) -> Any:
    """Task loss and L1 term per row, every row in one `stacked_forward` (no vmap): the same
    objective as the vmapped loss_fn above, with the fused attention kernel."""
    row_loss = torch.func.vmap(lambda logits, tokens, targets: task.loss(logits, Batch(tokens, targets)))
    hooks = [name for name, _ in penalty.fwd_hooks] if penalty else []

    def l1_of(name: str, out: list[torch.Tensor]) -> Any:  # the penalty's norm, averaged per row
        assert penalty is not None
        return lambda act: out.append(penalty.norm(name, act).flatten(1).mean(1))

    positions = task.loss_positions()

    def terms(params: dict[str, torch.Tensor], tokens: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        l1: list[torch.Tensor] = []
        record = {name: l1_of(name, l1) for name in hooks}
        at = None if positions is None else positions.to(tokens.device)
        logits = stacked_forward(model, params, tokens, record, at)
        if at is not None:  # the loss reads the targets at the logits' positions (Batch wants tokens to match)
            tokens, targets = tokens[..., at], targets[..., at]
        out = {"loss": row_loss(logits, tokens, targets)}
        if l1:
            out["l1"] = torch.stack(l1).sum(0) * penalty.coef  # type: ignore[union-attr]
        return out

    return terms
