"""Which torch device a command runs on.

Every public function and command that computes takes `device="auto"` by default: the GPU when
torch sees one, else the CPU. `resolve_device` only answers the question; it changes nothing in
the process. (The CPU memory tuning that training, analysis and the LLC want is an explicit
`toylens.memory.reuse_freed_memory()` at those entry points.)

    from toylens.device import resolve_device
    resolve_device("auto")   # device(type='cuda') on a GPU machine, device(type='cpu') elsewhere
"""

from __future__ import annotations

import torch

from toylens.errors import ToylensError

DeviceLike = str | torch.device
"""What a `device=` argument takes: "auto", "cpu", "cuda", "cuda:1", or a torch.device."""


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else must be a usable torch device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ToylensError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ToylensError(f"--device {device!r}: CUDA is not available on this machine")
    return dev
