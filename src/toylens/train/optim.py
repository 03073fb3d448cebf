"""AdamW with weight-decay groups, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from toylens.config import TrainConfig

MATRICES = frozenset({"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U"})
EMBEDDINGS = frozenset({"W_E", "W_pos"})


def decays(param_name: str, on: str) -> bool:
    """Whether weight decay applies to a parameter under `train.weight_decay_on`."""
    leaf = param_name.rsplit(".", 1)[-1]
    return on == "all" or leaf in MATRICES or (on == "embeddings" and leaf in EMBEDDINGS)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: decayed parameters and the rest (weight_decay 0)."""
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n, cfg.weight_decay_on)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if not decays(n, cfg.weight_decay_on)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


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
