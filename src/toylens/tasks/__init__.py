"""Tasks: each turns its config into data splits, a loss and metrics (see `tasks.base`)."""

from __future__ import annotations

from toylens.config import TaskConfig
from toylens.tasks.base import IGNORE, Batch, Split, Task, TaskSpec, TensorSplit
from toylens.tasks.induction import InductionTask
from toylens.tasks.sort import SortTask

TASKS: dict[str, type[Task]] = {"sort": SortTask, "induction": InductionTask}


def build_task(cfg: TaskConfig) -> Task:
    """The task described by a task config."""
    return TASKS[cfg.name](cfg)


__all__ = ["IGNORE", "TASKS", "Batch", "Split", "Task", "TaskSpec", "TensorSplit", "build_task"]
