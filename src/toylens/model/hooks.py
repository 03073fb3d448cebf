"""Hook points: an identity module at every named activation, and hooks scoped to one call.

A hook is `fn(activation, hook) -> activation | None`; returning a tensor replaces the
activation. Hooks are added only inside `model.hooks(...)` (or `run_with_hooks` /
`run_with_cache`, which use it) and removed when the block exits, even on an exception, so none
leaks into the next call.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from toylens.model.cache import ActivationCache

HookFn = Callable[..., Tensor | None]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None


class HookPoint(nn.Module):
    """Identity module that runs the hooks attached to it; `name` is its full dotted name."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self._fwd: list[HookFn] = []
        self._bwd: list[HookFn] = []

    @property
    def has_hooks(self) -> bool:
        return bool(self._fwd or self._bwd)

    def forward(self, x: Tensor) -> Tensor:
        for fn in self._fwd:
            out = fn(x, hook=self)
            if out is not None:
                x = out
        for fn in self._bwd:
            if x.requires_grad:
                x.register_hook(lambda grad, fn=fn: fn(grad, hook=self))
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


class HookedRootModule(nn.Module):
    """Base for a model with hook points: name lookup, scoped hooks, run_with_hooks/with_cache."""

    hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        """Name every HookPoint after its module path; call at the end of __init__."""
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_points(self, names: NameFilter) -> list[HookPoint]:
        """The hook points matching a name, a list of names, or a predicate on names."""
        if names is None:
            return list(self.hook_dict.values())
        if callable(names):
            return [hp for n, hp in self.hook_dict.items() if names(n)]
        for name in [names] if isinstance(names, str) else names:
            if name not in self.hook_dict:
                close = difflib.get_close_matches(name, list(self.hook_dict), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise KeyError(f"no hook point named {name!r}{hint}")
        wanted = [names] if isinstance(names, str) else list(names)
        return [self.hook_dict[n] for n in wanted]

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (),
        bwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (),
    ) -> Iterator[HookedRootModule]:
        """Attach hooks for the duration of the block; exactly those hooks are removed after."""
        added: list[tuple[list[HookFn], HookFn]] = []
        try:
            for hooks, attr in ((fwd_hooks, "_fwd"), (bwd_hooks, "_bwd")):
                for names, fn in hooks:
                    for hp in self.hook_points(names):
                        getattr(hp, attr).append(fn)
                        added.append((getattr(hp, attr), fn))
            yield self
        finally:
            for lst, fn in reversed(added):
                for i in range(len(lst) - 1, -1, -1):
                    if lst[i] is fn:
                        del lst[i]
                        break

    def run_with_hooks(self, *args: Any, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (), **kwargs: Any) -> Any:
        """`model(*args, **kwargs)` with the given hooks attached for this call only."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self,
        *args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        detach: bool = True,
        fwd_hooks: Sequence = (),
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """Run the model and keep the activations at the hook points matching `names_filter`.

        Activations are stored as seen by the hook point (after earlier hooks in `fwd_hooks`
        have run). Returns (output, cache).
        """
        store: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            y = x.detach() if detach else x
            store[hook.name] = y.to(device) if device is not None else y

        caching = [(hp.name, save) for hp in self.hook_points(names_filter)]
        with self.hooks(list(fwd_hooks) + caching):
            out = self(*args, **kwargs)
        order = {name: i for i, name in enumerate(self.hook_dict)}
        return out, ActivationCache(dict(sorted(store.items(), key=lambda kv: order[kv[0]])), self)
