"""`train.compile`: the training forward pass under `torch.compile`.

A solo run compiles its forward (`Trainer.net`: the model, or its DistributedDataParallel
wrapper), with the L1 penalty's hooks inside the graph (torch.compile traces a hook point's Python
hooks like the rest of the forward). An ensemble compiles its vmapped per-member forward and loss,
except with an L1 penalty, whose hooks' recording is a side effect torch.compile cannot trace
inside vmap: such an ensemble trains uncompiled, with a warning. Evaluation, checkpoints and
analysis use the plain model, so nothing compiled is ever saved.

What it costs: the first step of each batch shape compiles (an epoch whose last batch is smaller
compiles twice). With the default backend, inductor, that is tens of seconds on a CPU (where it
needs a C++ compiler) and seconds to a minute on a GPU, repaid where steps are many and the
model's kernels are small enough that launching them dominates, i.e. on a GPU. The compiled
forward computes the eager one's values up to float rounding (fused kernels sum in other
orders): tests/train/test_compiled.py holds a few steps of compiled training to the eager run's
losses.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TypeVar

import torch

from toylens.errors import ToylensError

F = TypeVar("F", bound=Callable)

BACKEND = "inductor"
"""The torch.compile backend. Tests on a CPU swap in "aot_eager" (the same graph capture and
autograd, without inductor's code generation, which takes about 40 s per batch shape on 2 cores)."""


def compile_forward(fn: F, enabled: bool, device: torch.device) -> F:
    """`fn` under torch.compile when `enabled` (train.compile), else `fn` itself."""
    if not enabled:
        return fn
    check_compiler(enabled, device)
    return torch.compile(fn, backend=BACKEND)  # type: ignore[return-value]


def check_compiler(enabled: bool, device: torch.device) -> None:
    """Raise a one-line ToylensError when train.compile is on for a CPU without the C++ compiler
    inductor needs; `train` calls it before it writes anything."""
    if enabled and BACKEND == "inductor" and device.type == "cpu" and not _cpp_compiler():
        raise ToylensError(
            "train.compile: torch.compile's inductor needs a C++ compiler on the CPU and none was found "
            "(set CXX, or install g++); set train.compile=false to train without compiling"
        )


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use: $CXX, else g++ or clang++ on PATH (None if none)."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++"]
    return next((path for c in candidates if (path := shutil.which(c))), None)
