"""Configs from files and dicts, validated strictly, and saved back as YAML."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from toylens.config.base import SectionT
from toylens.config.fields import apply_sets, copy_tree, format_validation_error
from toylens.config.sections import RunConfig
from toylens.config.text import ConfigDumper, read_yaml, shipped
from toylens.errors import ToylensError

# ------------------------------------------------------------------------------ load / save


def load_config(source: str | Path | dict, overrides: Iterable[str] = ()) -> RunConfig:
    """Parse a YAML file (or a dict) plus `key.path=value` overrides (`apply_sets`) into a
    validated RunConfig.

    A missing `name` defaults to the file's stem. Raises ToylensError naming the bad field.
    """
    where = "config"
    if isinstance(source, dict):
        raw = copy_tree(source)
    else:
        path = shipped(Path(source))
        where = str(path)
        raw = read_yaml(path, "config", "a mapping of sections (task, model, train)")
        raw.setdefault("name", path.stem)
    apply_sets(raw, overrides)
    return validate_config(raw, where)


def validate_config(raw: dict, where: str = "config") -> RunConfig:
    return validate_input(RunConfig, raw, where)


def validate_input(model: type[SectionT], raw: Any, where: str) -> SectionT:
    """`model` from what a user wrote (a YAML file, --set values, JSON metadata), strictly: a bool
    is not a number, a quoted number is text, 1.5 is not an integer, a number is not text.

    Validates through JSON in pydantic's strict mode, which still takes an int for a float and a
    list for a tuple (`betas: [0.9, 0.99]`); a value JSON has no type for (a YAML date) is an error
    naming its field. Raises ToylensError: `<where>: <field>: <problem>`.
    """
    problem = not_json(raw)
    if problem:
        raise ToylensError(f"{where}: {problem}")
    try:
        return model.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as e:
        raise ToylensError(f"{where}: {format_validation_error(e, model)}") from None


def save_config(cfg: RunConfig, path: Path) -> None:
    from toylens.storage import atomic_write_text

    atomic_write_text(path, config_to_yaml(cfg))


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.dump(cfg.model_dump(mode="json"), Dumper=ConfigDumper, sort_keys=False)


def not_json(value: Any, path: str = "", outer: tuple[int, ...] = ()) -> str | None:
    """The first value JSON has no type for (a YAML date or set, a non-text key, a mapping that
    holds itself through a YAML alias) as `field: problem`; `outer` are the enclosing containers."""
    if isinstance(value, (dict, list, tuple)) and id(value) in outer:
        return f"{path}: contains itself (a YAML alias inside its own anchor)"
    if isinstance(value, dict):
        for key, item in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                return f"{dotted}: a key must be text (got {key!r})"
            problem = not_json(item, dotted, (*outer, id(value)))
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = not_json(item, f"{path}.{i}", (*outer, id(value)))
            if problem:
                return problem
    elif not (value is None or isinstance(value, (str, int, float))):
        kind = {"date": "a date", "datetime": "a timestamp", "bytes": "binary data"}.get(
            type(value).__name__, f"a {type(value).__name__}"
        )
        return f"{path or 'value'}: {value} is {kind}, not text, a number, a boolean, null, a list or a mapping"
    return None
