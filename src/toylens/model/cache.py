"""ActivationCache: the activations of one forward pass, by hook name.

`cache["blocks.0.attn.hook_pattern"]` or, as in TransformerLens, `cache["pattern", 0]`,
`cache["resid_post", 1]`, `cache["embed"]`. The decompositions built on it (per-head residual
contributions, logit lens, direct logit attribution) live in `toylens.analysis`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from toylens.config.hooks import act_name

if TYPE_CHECKING:
    from torch import nn


class ActivationCache(Mapping[str, Tensor]):
    """Read-only mapping of hook name -> activation, in forward order."""

    def __init__(self, store: dict[str, Tensor], model: nn.Module | None = None):
        self._store = store
        self.model = model

    def _key(self, key: Any) -> str:
        if isinstance(key, tuple):
            return act_name(*key)
        if key in self._store:
            return key
        try:
            return act_name(key)
        except KeyError:
            return key

    def __getitem__(self, key: Any) -> Tensor:
        name = self._key(key)
        if name not in self._store:
            raise KeyError(f"{name!r} is not in this cache (cached: {len(self._store)} hooks)")
        return self._store[name]

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._store
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def to(self, device: Any) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model)

    def __repr__(self) -> str:
        return f"ActivationCache({list(self._store)})"
