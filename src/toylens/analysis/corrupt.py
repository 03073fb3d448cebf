"""Corrupted inputs for patching, one generator per task.

A generator returns a `CorruptedPair`: clean and corrupted tokens of the same shape that differ
as little as possible, the clean answers to measure (IGNORE where nothing is measured) and, when
the corruption changes the answer, the corrupted answers (what `logit_diff` compares against):

- sort: the element at one list position (the same in every example) is replaced by a value not
  in the list (another value, with duplicates); one token changes, the sorted half is kept. Answers:
  the clean sorted outputs; wrong answers: what a perfect sorter would output for the corrupted
  list after the same prefix (the next larger value of the corrupted list). Default metric:
  logit_diff.
- induction and lm: a repeated sequence `[BOS, r_1..r_L, r_1..r_L]` of random tokens is broken
  by replacing its first half with other random tokens, so the second half can no longer be
  predicted by copying. Answers: r_2..r_L at the second-half positions; the answer does not change
  (nothing predicts anything else), so the default metric is neg_loss on those positions.

`corrupted_pair(task, n, seed)` builds the pair for a task; a new task adds a function here and
an entry in `CORRUPTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from toylens.analysis.profiles import bos_token, random_token_ids
from toylens.errors import ToylensError
from toylens.tasks import IGNORE, Task
from toylens.tasks.sort import SortTask


@dataclass
class CorruptedPair:
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answers: Int[Tensor, "batch pos"]
    wrong: Int[Tensor, "batch pos"] | None
    description: str


def corrupt_sort(task: SortTask, n: int, gen: torch.Generator) -> CorruptedPair:
    """Replace the element at one position (the same, random, position in every list) by a value
    that is not in the list; everything else, the sorted half included, stays as it was."""
    split = task.splits[task.eval_splits[0]]
    clean = split.batch(torch.arange(min(n, len(split))))
    lists = clean.tokens[:, : task.n].clone()
    rows = torch.arange(len(lists))
    where = int(torch.randint(task.n, (1,), generator=gen))
    # A random value per row, excluding the values already in the list (or just the replaced one).
    score = torch.rand(len(lists), task.cfg.n_values, generator=gen)
    banned = lists if not task.cfg.duplicates else lists[:, where : where + 1]
    score.scatter_(1, banned, -1.0)
    lists[rows, where] = score.argmax(1)
    corrupted = clean.tokens.clone()
    corrupted[:, : task.n] = lists
    wrong = torch.full_like(clean.targets, IGNORE)
    wrong[:, task.n :] = _sort_answers(task, lists, clean.tokens[:, task.n :])
    return CorruptedPair(clean.tokens, corrupted, clean.targets, wrong,
                         f"list element {where + 1} replaced by a value not in the list; sorted half unchanged")


def _sort_answers(task: SortTask, lists: Tensor, read: Tensor) -> Tensor:
    """What a perfect sorter outputs for `lists` after reading `read` (SEP, then the clean sorted
    outputs): the smallest list value above the value just read (IGNORE if there is none). With
    duplicates, the k-th smallest value at the k-th output instead."""
    if task.cfg.duplicates:
        return lists.sort(1).values
    previous = torch.where(read == task.sep, -1, read)  # [batch, n]
    above = lists[:, None, :] > previous[:, :, None]  # [batch, output, list]
    candidate = torch.where(above, lists[:, None, :], task.cfg.n_values)
    answer = candidate.min(-1).values
    return torch.where(answer == task.cfg.n_values, IGNORE, answer)


def corrupt_repeated(task: Task, n: int, gen: torch.Generator, half: int = 20) -> CorruptedPair:
    """`[BOS, r, r]` against `[BOS, r', r]`: the first half replaced, so copying cannot work."""
    half = min(half, (task.spec.n_ctx - 1) // 2)
    ids = random_token_ids(task)
    r = ids[torch.randint(len(ids), (n, half), generator=gen)]
    shift = torch.randint(1, len(ids), (n, half), generator=gen)  # every replaced token differs from r
    other = ids[(torch.searchsorted(ids, r) + shift) % len(ids)]
    bos = bos_token(task)
    first = torch.full((n, 1), bos) if bos is not None else ids[torch.randint(len(ids), (n, 1), generator=gen)]
    clean = torch.cat([first, r, r], dim=1)
    corrupted = torch.cat([first, other, r], dim=1)
    answers = torch.full_like(clean, IGNORE)
    answers[:, half + 1 : 2 * half] = clean[:, half + 2 :]  # r_2..r_half, predictable by copying
    return CorruptedPair(clean, corrupted, answers, None,
                         f"[BOS, r_1..r_{half}, r_1..r_{half}] vs the first half replaced by other random tokens")


CORRUPTIONS: dict[str, Callable[[Task, int, torch.Generator], CorruptedPair]] = {
    "sort": corrupt_sort,  # type: ignore[dict-item]
    "induction": corrupt_repeated,
    "lm": corrupt_repeated,
}
DEFAULT_METRIC = {"sort": "logit_diff", "induction": "neg_loss", "lm": "neg_loss"}


def corrupted_pair(task: Task, n: int = 32, seed: int = 0) -> CorruptedPair:
    """`n` clean inputs for the task and their corrupted versions."""
    if task.name not in CORRUPTIONS:
        raise ToylensError(f"task {task.name!r}: no corrupted-input generator for patching (have: {', '.join(CORRUPTIONS)})")
    return CORRUPTIONS[task.name](task, n, torch.Generator().manual_seed(seed))
