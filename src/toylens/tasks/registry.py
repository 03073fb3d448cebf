"""Which Task a config builds. `register_task` is how every task, shipped or not, becomes known:

    class ToyConfig(TaskConfig):
        name: Literal["toy"] = "toy"
        n_values: int = 8

    @register_task
    class ToyTask(Task):
        config_class = ToyConfig
        ...

makes `task: {name: toy}` a valid `RunConfig.task` (strict validation, `--set task.n_values=...`,
`toylens config fields`, the config saved in a run directory and in checkpoints) and `build_task`
build a ToyTask from it. A task defined outside toylens must be registered (its module imported)
before a config that names it is loaded.
"""

from __future__ import annotations

from typing import Any, TypeVar

from toylens.config import TaskConfig, register_task_config, task_config_name
from toylens.errors import ToylensError
from toylens.tasks.base import Task

TaskT = TypeVar("TaskT", bound=type[Task])

TASKS: dict[str, type[Task]] = {}
"""Every registered Task class, by name."""


def register_task(cls: TaskT) -> TaskT:
    """Register a Task class and its `config_class` under the config's `name`, and set `cls.name`.

    Registering a class again, or a class with the same module and name (a reloaded module), replaces
    it; another class under a taken name is an error."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ToylensError(f"{cls!r}: register_task takes a subclass of toylens.tasks.Task")
    config = getattr(cls, "config_class", None)
    if config is None:
        raise ToylensError(f"{cls.__qualname__}: set config_class, the task's config section")
    name = task_config_name(config)
    old = TASKS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ToylensError(f"task {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    register_task_config(config)
    cls.name = name
    TASKS[name] = cls
    return cls


def task_class(cfg: TaskConfig) -> type[Task]:
    """The Task class registered for a task config."""
    cls = TASKS.get(cfg.name)
    if cls is None:
        raise ToylensError(
            f"task {cfg.name!r}: no Task class is registered for it (have: {', '.join(TASKS)}); "
            "import the module that defines it"
        )
    return cls


def build_task(cfg: TaskConfig, saved: dict[str, Any] | None = None) -> Task:
    """The task described by a task config; with `saved` (the JSON files a run saved in its `task/`
    folder, see `Task.saved_files`), the task as that run fitted it."""
    cls = task_class(cfg)
    return cls.from_saved(cfg, saved) if saved else cls(cfg)  # type: ignore[call-arg]
