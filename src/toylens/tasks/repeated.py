"""Corrupted inputs for the next-token tasks (induction, language modelling): a repeated sequence of
random tokens, and the same with its first half replaced.

`[BOS, r_1..r_L, r_1..r_L]` against `[BOS, r'_1..r'_L, r_1..r_L]`: in the clean input the second
half can be predicted by copying, in the corrupted one it cannot. Answers: r_2..r_L at the
second-half positions. The answer does not change (nothing predicts anything else), so there is
no wrong answer and the patching metric is neg_loss on those positions.
"""

from __future__ import annotations

import torch

from toylens.tasks.base import IGNORE, CorruptedPair, Task

HALF = 50
"""Tokens in each half of a repeated sequence, here and in the induction-style head scores
(`analysis.attention.repeated_token_scores`): patching breaks the sequences those scores read.
Shorter halves need not exercise an induction circuit: configs/induction-2l.yaml's model predicts
the second half of 20-token halves at 3.67 nats (4.17 corrupted) but of 50-token halves at 0.74
(4.76 corrupted), see BENCHMARKS.md."""


def repeated_pair(task: Task, n: int, seed: int, half: int = HALF) -> CorruptedPair:
    """`n` pairs of halves of `half` tokens (fewer when n_ctx is short), drawn from the task's
    `random_token_ids` and started with its `bos_token` (one more random token without one)."""
    gen = torch.Generator().manual_seed(seed)
    half = min(half, (task.spec.n_ctx - 1) // 2)
    ids = task.random_token_ids()
    r = ids[torch.randint(len(ids), (n, half), generator=gen)]
    shift = torch.randint(1, len(ids), (n, half), generator=gen)  # every replaced token differs from r
    other = ids[(torch.searchsorted(ids, r) + shift) % len(ids)]
    bos = task.bos_token()
    first = torch.full((n, 1), bos) if bos is not None else ids[torch.randint(len(ids), (n, 1), generator=gen)]
    clean = torch.cat([first, r, r], dim=1)
    corrupted = torch.cat([first, other, r], dim=1)
    answers = torch.full_like(clean, IGNORE)
    answers[:, half + 1 : 2 * half] = clean[:, half + 2 :]  # r_2..r_half, predictable by copying
    return CorruptedPair(
        clean,
        corrupted,
        answers,
        None,
        f"[BOS, r_1..r_{half}, r_1..r_{half}] vs the first half replaced by other random tokens",
    )
