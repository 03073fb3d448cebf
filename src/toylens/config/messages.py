"""How config errors name what the user wrote: a value as YAML would call it, and "did you mean".

    suggest("wieght_decay", ["weight_decay", "lr"])   # " (did you mean 'weight_decay'?)"
    kind({"a": 1})                                     # "a mapping"
    shown(None)                                        # "null"

Every one-line error about a config, a study, a sweep spec or an LLC setting words its values with
these, so that they read the same everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def suggest(word: str, valid: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the closest valid word, or "" when none is close."""
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shown(value: Any) -> str:
    """A value in an error message: repr, but null for None (as the user wrote it)."""
    return "null" if value is None else repr(value)


def kind(value: Any) -> str:
    """A value as a YAML user would name it: "a mapping", "a list", "text 'abc'", "3", "null"."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"text {value!r}"
    return shown(value)
