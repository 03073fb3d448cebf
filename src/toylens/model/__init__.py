"""The hookable transformer: `Transformer`, its hook machinery, and `functional`, the arithmetic
that the modules and everything else compute with. The names and shapes of every hook point and
parameter are listed in `toylens.config.hooks` (the config checks hook names without the model);
`act_name` and `hook_names` are re-exported here, where a model's user looks for them."""

from __future__ import annotations

from toylens.config.hooks import act_name, hook_names
from toylens.model.cache import ActivationCache
from toylens.model.factored import FactoredMatrix
from toylens.model.hooks import HookedRootModule, HookPoint
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
