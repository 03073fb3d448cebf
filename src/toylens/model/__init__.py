"""The hookable transformer: `Transformer`, its hook machinery, the name table, and
`functional`, the arithmetic that the modules and everything else compute with."""

from toylens.model.cache import ActivationCache
from toylens.model.factored import FactoredMatrix
from toylens.model.hooks import HookedRootModule, HookPoint
from toylens.model.names import act_name, hook_names
from toylens.model.transformer import Transformer

__all__ = ["ActivationCache", "FactoredMatrix", "HookPoint", "HookedRootModule", "Transformer", "act_name", "hook_names"]
