"""Mixed precision for the training forward pass (`train.precision`).

bf16 runs the forward under `torch.autocast` with bfloat16 and hands back float32 logits, so
the loss, the backward into float32 weights and AdamW are unchanged; bfloat16 has float32's
exponent range, so no loss scaling is needed (float16 would need it and is not offered).
"""

from __future__ import annotations

import torch

Precision = str  # "fp32" | "bf16", validated by TrainConfig.precision


def forward_autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """The context for one training forward pass: bfloat16 autocast for "bf16", a no-op otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def loss_logits(logits: torch.Tensor, precision: Precision) -> torch.Tensor:
    """The logits the loss is taken on: float32 after a bf16 forward; untouched otherwise (a
    float64 model keeps float64 logits)."""
    return logits.float() if precision == "bf16" else logits
