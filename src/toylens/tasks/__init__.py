"""Tasks: each turns its config into data splits, a loss and metrics, and says what the trainer and
the analyses need to know about it (see `tasks.base`). One file per task; each registers itself
with `register_task` (see `tasks.registry`), as a task defined outside toylens does."""

from __future__ import annotations

from toylens.tasks.base import IGNORE, Batch, CorruptedPair, Split, Task, TaskSpec, TensorSplit
from toylens.tasks.classify import ClassifyTask
from toylens.tasks.induction import InductionTask
from toylens.tasks.lm import LmTask
from toylens.tasks.registry import TASKS, build_task, register_task, task_class
from toylens.tasks.sort import SortTask

__all__ = [
    "IGNORE",
    "TASKS",
    "Batch",
    "ClassifyTask",
    "CorruptedPair",
    "InductionTask",
    "LmTask",
    "SortTask",
    "Split",
    "Task",
    "TaskSpec",
    "TensorSplit",
    "build_task",
    "register_task",
    "task_class",
]
