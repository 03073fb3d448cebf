"""Corrupted inputs for patching, one generator per task.

A generator takes the task and a clean `Batch` and returns a corrupted `Batch` of the same shape
whose answers differ from the clean ones at some target positions, changing as little of the
input as possible:

- sort: one list element is replaced by a value not in the list (another value, with duplicates),
  and the sorted half is rebuilt, so the outputs from that value on change.

`corrupted_pair(task, n, seed)` draws the clean batch from the task's first evaluation split.
A new task adds a function here and an entry in `CORRUPTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from toylens.errors import ToylensError
from toylens.tasks import Batch, Task
from toylens.tasks.sort import SortTask


@dataclass
class CorruptedPair:
    clean: Batch
    corrupted: Batch
    description: str


def corrupt_sort(task: SortTask, clean: Batch, gen: torch.Generator) -> Batch:
    """Replace one random element of each list by a value that is not in it."""
    n = task.n
    lists = clean.tokens[:, :n].clone()
    rows = torch.arange(len(lists))
    where = torch.randint(n, (len(lists),), generator=gen)
    # A random value per row, excluding the values already in the list (or just the replaced one).
    score = torch.rand(len(lists), task.cfg.n_values, generator=gen)
    banned = lists if not task.cfg.duplicates else lists[rows, where][:, None]
    score.scatter_(1, banned, -1.0)
    lists[rows, where] = score.argmax(1)
    tokens, targets = task.encode(lists)
    return Batch(tokens, targets)


CORRUPTIONS: dict[str, tuple[Callable[..., Batch], str]] = {
    "sort": (corrupt_sort, "one list element replaced by a value not in the list; sorted half rebuilt"),
}


def corrupted_pair(task: Task, n: int = 64, seed: int = 0, split: str | None = None) -> CorruptedPair:
    """`n` clean examples from the task's evaluation split and their corrupted versions."""
    if task.name not in CORRUPTIONS:
        raise ToylensError(f"task {task.name!r}: no corrupted-input generator for patching (have: {', '.join(CORRUPTIONS)})")
    fn, description = CORRUPTIONS[task.name]
    data = task.splits[split or task.eval_splits[0]]
    clean = data.batch(torch.arange(min(n, len(data))))
    clean = Batch(clean.tokens, clean.targets)  # plain tokens/targets, whatever the task's Batch type
    return CorruptedPair(clean, fn(task, clean, torch.Generator().manual_seed(seed)), description)
