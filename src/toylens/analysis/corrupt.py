"""Deprecated: corrupted inputs for patching come from the task now, `task.corrupted_pair(n, seed)`
(each task's file in `toylens/tasks/` says how it corrupts). `corrupted_pair(task, n, seed)` keeps
working, with a FutureWarning, for one release."""

from __future__ import annotations

import warnings

from toylens.tasks import CorruptedPair, Task

__all__ = ["CorruptedPair", "corrupted_pair"]


def corrupted_pair(task: Task, n: int = 32, seed: int = 0) -> CorruptedPair:
    """Deprecated: `task.corrupted_pair(n, seed)`."""
    warnings.warn(
        "toylens.analysis.corrupted_pair(task, n, seed) is deprecated; use task.corrupted_pair(n, seed)",
        FutureWarning,
        stacklevel=2,
    )
    return task.corrupted_pair(n, seed)
