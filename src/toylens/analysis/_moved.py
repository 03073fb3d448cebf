"""Old names of modules that moved, kept for one release: importing one warns, and its names
are looked up where they went."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def forward(old: str, *new: str) -> Callable[[str], Any]:
    """A module `__getattr__` for the old module `old` that finds each name in the `new` modules."""
    warnings.warn(
        f"{old} moved to {new[0].rsplit('.', 1)[0]}; import from there (the old name goes in the next release)",
        FutureWarning,
        stacklevel=3,
    )
    modules = [importlib.import_module(name) for name in new]

    def __getattr__(name: str) -> Any:
        for module in modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
