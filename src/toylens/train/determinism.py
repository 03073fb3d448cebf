"""What `train.deterministic` does: deterministic CUDA kernels for the duration of a run.

On a CPU nothing needs switching: toylens's forward and backward passes use only kernels whose
reductions have a fixed order for a given thread count (the embedding lookup goes through
`index_select`, whose backward adds repeated tokens in order; advanced indexing would add them
with atomics), so reruns are bit-identical at any thread count, though runs at different thread
counts may differ in the last bits. On CUDA, cuBLAS and several kernels (index_add_, attention
backward) reduce in an order that changes between runs; PyTorch's deterministic mode replaces
them, which needs a fixed cuBLAS workspace (CUBLAS_WORKSPACE_CONFIG) set before cuBLAS starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: str | torch.device) -> Iterator[None]:
    """Turn on PyTorch's deterministic algorithms while the block runs, on CUDA devices when
    `enabled`; restore the previous settings afterwards."""
    if not enabled or torch.device(device).type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
