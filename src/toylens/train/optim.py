"""AdamW with the weight-decay groups of `regularisers`, and the learning-rate schedule.

Which AdamW kernel runs depends on the device (`adamw_kernel`): the fused kernel on CUDA, torch's
for-loop on the CPU. Both compute the same update; on CUDA they differ in float rounding only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

from toylens.config import TrainConfig
from toylens.train.regularisers import Regularisers

KERNEL_FLAGS = ("foreach", "fused")
"""The param-group entries that pick torch's AdamW kernel (a property of this process's device,
not of a run: `restore_checkpoint` keeps them when it loads a checkpoint's groups)."""


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: the decayed parameters and the rest (weight_decay 0); see `Regularisers`.
    The kernel is `adamw_kernel`'s choice for the model's device."""
    device = next(model.parameters()).device
    groups = Regularisers.of(model, cfg).param_groups(model)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **adamw_kernel(device))


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """torch.optim.AdamW's kernel flags for parameters on `device`.

    - CUDA: `fused=True`, one kernel for every parameter of a group instead of several per
      parameter (float rounding differs from the for-loop in the last bits: fused and for-loop runs
      agree to 1e-4 after 20 steps, tests/train/test_optim_kernels.py).
    - Other devices with multi-tensor kernels (XPU, ...): `foreach=True`.
    - CPU: `foreach=False`, torch's for-loop, as before this choice existed. The CPU has no
      multi-tensor kernels, so foreach (measured bit-identical to the for-loop there) would gain
      nothing, and the fused CPU kernel rounds differently, which would change the weights every
      earlier CPU run reproduces bit for bit.
    """
    if device.type == "cuda":
        return {"foreach": False, "fused": True}
    return {"foreach": device.type in _get_foreach_kernels_supported_devices(), "fused": False}


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
