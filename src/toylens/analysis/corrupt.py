"""Corrupted inputs for patching, one generator per task.

A generator returns a `CorruptedPair`: clean and corrupted tokens of the same shape that differ
as little as possible, the clean answers to measure (IGNORE where nothing is measured) and, when
the corruption changes the answer, the corrupted answers (what `logit_diff` compares against):

- sort: the element at one list position (the same in every example) is replaced by a value not
  in the list (another value, with duplicates); one token changes, the sorted half is kept. Answers:
  the clean sorted outputs; wrong answers: what a perfect sorter would output for the corrupted
  list after the same prefix (the next larger value of the corrupted list). Default metric:
  logit_diff.
- classify: one sentiment word of each review (good, great, loved, ...) is swapped for its antonym
  (reviews without one are skipped). Answers: the clean label; wrong answers: the other class.
  Default metric: logit_diff. (Whether the prediction flips depends on the model: a small model
  reads many words, so one swap usually moves the logit difference only part of the way.)
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


# Single-word sentiment antonyms; a pair is used in every casing/spacing the tokenizer keeps as one token.
SENTIMENT_PAIRS = (
    ("good", "bad"), ("great", "terrible"), ("best", "worst"), ("love", "hate"), ("loved", "hated"),
    ("excellent", "awful"), ("wonderful", "horrible"), ("amazing", "boring"), ("beautiful", "ugly"),
    ("brilliant", "stupid"), ("perfect", "poor"), ("fun", "dull"), ("enjoyable", "painful"),
)


def antonym_ids(tokenizer: object) -> dict[int, int]:
    """token id -> id of its antonym, for the SENTIMENT_PAIRS that are single tokens both ways."""
    swap: dict[int, int] = {}
    for a, b in SENTIMENT_PAIRS:
        for fa, fb in ((a, b), (a.capitalize(), b.capitalize())):
            for space in ("", " "):
                ia = tokenizer.encode(space + fa, special_tokens=False)  # type: ignore[attr-defined]
                ib = tokenizer.encode(space + fb, special_tokens=False)  # type: ignore[attr-defined]
                if len(ia) == 1 and len(ib) == 1 and ia != ib:
                    swap[ia[0]], swap[ib[0]] = ib[0], ia[0]
    return swap


def corrupt_classify(task: Task, n: int, gen: torch.Generator) -> CorruptedPair:
    """Swap one sentiment word of each review for its antonym (reviews without one are skipped);
    the wrong answer is the other class."""
    swap = antonym_ids(task.tokenizer)  # type: ignore[attr-defined]
    split = task.splits[task.eval_splits[0]]
    batch = split.batch(torch.arange(min(len(split), 20 * n)))
    table = torch.full((task.spec.d_vocab,), -1, dtype=torch.long)
    table[torch.tensor(list(swap))] = torch.tensor(list(swap.values()))
    before_label = (batch.targets != IGNORE).long().flip(1).cumsum(1).flip(1) > 0  # the review itself
    swappable = (table[batch.tokens] >= 0) & before_label
    rows = swappable.any(1).nonzero().squeeze(1)[:n]
    if len(rows) == 0:
        raise ToylensError(f"task classify: none of {len(batch)} reviews contains a sentiment word to swap")
    clean, targets, swappable = batch.tokens[rows], batch.targets[rows], swappable[rows]
    width = int((targets != IGNORE).nonzero()[:, 1].max()) + 1  # drop padding no kept review needs
    clean, targets, swappable = clean[:, :width], targets[:, :width], swappable[:, :width]
    # one random swappable position per review
    pick = torch.where(swappable, torch.rand(swappable.shape, generator=gen), -1.0).argmax(1)
    corrupted = clean.clone()
    corrupted[torch.arange(len(rows)), pick] = table[clean[torch.arange(len(rows)), pick]]
    wrong = torch.where(targets != IGNORE, (targets + 1) % task.spec.d_vocab_out, IGNORE)
    return CorruptedPair(clean, corrupted, targets, wrong,
                         "one sentiment word of each review swapped for its antonym (good/bad, great/terrible, ...)")


CORRUPTIONS: dict[str, Callable[[Task, int, torch.Generator], CorruptedPair]] = {
    "sort": corrupt_sort,  # type: ignore[dict-item]
    "induction": corrupt_repeated,
    "lm": corrupt_repeated,
    "classify": corrupt_classify,
}
DEFAULT_METRIC = {"sort": "logit_diff", "induction": "neg_loss", "lm": "neg_loss", "classify": "logit_diff"}


def corrupted_pair(task: Task, n: int = 32, seed: int = 0) -> CorruptedPair:
    """`n` clean inputs for the task and their corrupted versions."""
    if task.name not in CORRUPTIONS:
        raise ToylensError(f"task {task.name!r}: no corrupted-input generator for patching (have: {', '.join(CORRUPTIONS)})")
    return CORRUPTIONS[task.name](task, n, torch.Generator().manual_seed(seed))
