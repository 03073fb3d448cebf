"""Training batches onto the run's device: read on the host, then copied to the device.

On CUDA the next batch is read while the device runs the current step: a background thread
reads it (an `lm` batch gathers its windows from the memory-mapped token cache) into pinned
memory, and the copy to the device is asynchronous (`non_blocking=True` from pinned memory does
not wait for the device). On any other device, batches are read and moved one at a time in the
loop's thread, as before. Either way a batch holds the same tokens (tests/train/test_batches.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from toylens.tasks import Batch

K = TypeVar("K")
R = TypeVar("R")


def device_batches(keys: Iterable[K], read: Callable[[K], R], device: torch.device) -> Iterator[R]:
    """`read(key)` for each key in order, with every `Batch` in it (it may be a tuple holding one)
    on `device`; on CUDA read one key ahead in a background thread, into pinned memory."""
    if device.type != "cuda":
        return (_move(read(key), device) for key in keys)
    return (_move(item, device) for item in read_ahead(keys, lambda key: _pin(read(key))))


def read_ahead(keys: Iterable[K], read: Callable[[K], R]) -> Iterator[R]:
    """`read(key)` for each key in order, each one started in a background thread before the
    previous one is handed over, so the caller's work on item i overlaps the reading of item i+1.
    An exception in `read` is raised where its item would have been handed over."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="toylens-batches") as pool:
        ahead: Future[R] | None = None
        for key in keys:
            upcoming = pool.submit(read, key)
            if ahead is not None:
                yield ahead.result()
            ahead = upcoming
        if ahead is not None:
            yield ahead.result()


def _pin(item: Any) -> Any:
    """The item with its batches' tensors in page-locked memory (so copies from it are asynchronous)."""
    if isinstance(item, Batch):
        return Batch(item.tokens.pin_memory(), item.targets.pin_memory())
    return tuple(_pin(x) for x in item) if isinstance(item, tuple) else item


def _move(item: Any, device: torch.device) -> Any:
    if isinstance(item, Batch):
        return item.to(device)  # non_blocking: asynchronous from pinned memory
    return tuple(_move(x, device) for x in item) if isinstance(item, tuple) else item
