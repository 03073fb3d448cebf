"""AdamW with the weight-decay groups of `regularisers`, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from toylens.config import TrainConfig
from toylens.train.regularisers import Regularisers


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: the decayed parameters and the rest (weight_decay 0); see `Regularisers`."""
    return torch.optim.AdamW(Regularisers.of(model, cfg).param_groups(model), lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate for optimisation step `step` (0-based): linear warmup, then cosine or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def __getattr__(name: str) -> object:
    """`decays` moved to `toylens.train.regularisers` (one definition of the objective's terms);
    the old name works for one release."""
    if name == "decays":
        import warnings

        from toylens.train import regularisers

        warnings.warn(
            "toylens.train.optim.decays moved to toylens.train.regularisers.decays; "
            "the old name goes in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return regularisers.decays
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
