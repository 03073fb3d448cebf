"""The hookable transformer: `Transformer`, its hook machinery, the name table, and
`functional`, the arithmetic that the modules and everything else compute with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toylens.model.cache import ActivationCache
from toylens.model.factored import FactoredMatrix
from toylens.model.hooks import HookedRootModule, HookPoint
from toylens.model.names import act_name, hook_names

if TYPE_CHECKING:
    from toylens.model.transformer import Transformer

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
    "Transformer",
    "act_name",
    "hook_names",
]


def __getattr__(name: str) -> Any:
    """`Transformer` is imported on first use: transformer.py needs `toylens.config`, which needs the
    name table here (`train.l1.hooks` must name hooks of the model), so this package may not need it."""
    if name == "Transformer":
        from toylens.model.transformer import Transformer

        globals()["Transformer"] = Transformer
        return Transformer
    raise AttributeError(f"module 'toylens.model' has no attribute {name!r}")
