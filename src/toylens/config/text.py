"""YAML in and out: configs are read with YAML 1.2 number rules (1e-4 is a float) and written
back the same way."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from toylens.config.messages import kind
from toylens.errors import ToylensError

log = logging.getLogger("toylens")

SHIPPED = Path(__file__).resolve().parents[1] / "presets"
"""The configs that ship inside the package (run configs, studies/, sweeps/): `src/toylens/presets/`,
named apart from `config/` (the schema). Users write them as `configs/...`; a checkout's top-level
`configs` is a link to this folder, and `shipped` finds them from anywhere else."""

# ------------------------------------------------------------------------------------ YAML


class ConfigLoader(yaml.SafeLoader):
    """Safe YAML that also reads 1e-4 as a number. PyYAML follows YAML 1.1, where a float needs a
    dot (1e-4 is the text "1e-4"); YAML 1.2 and JSON read it as a number, and strict validation
    would otherwise reject a learning rate written the usual way."""


class ConfigDumper(yaml.SafeDumper):
    """Safe YAML that quotes text such as "1e-4", so that ConfigLoader reads it back as text."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$")
for _cls in (ConfigLoader, ConfigDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def shipped(path: Path) -> Path:
    """`path`, or where it is missing and written `configs/...` (as the README writes them), the
    config of that name shipped with toylens, so the documented commands run from any folder of
    an installed toylens. Anything else is returned as given (its reader then says it is missing)."""
    if path.exists() or path.is_absolute() or path.parts[:1] != ("configs",):
        return path
    candidate = SHIPPED.joinpath(*path.parts[1:])
    if not candidate.is_file():
        return path
    log.info("%s: not in %s; using the one shipped with toylens, %s", path, Path.cwd(), candidate)
    return candidate


def parse_yaml(text: str | bytes) -> Any:
    """YAML text as configs read it (ConfigLoader); raises yaml.YAMLError."""
    return yaml.load(text, Loader=ConfigLoader)


def read_yaml(path: Path, what: str, shape: str) -> dict:
    """The top-level mapping of a YAML file (a config, sweep spec or study). Errors name the file:
    not found, invalid YAML, empty (nothing but comments, or `{}`), or a top level that is not a
    mapping; `shape` says what the mapping holds."""
    if not path.is_file():
        raise ToylensError(f"{path}: {what} file not found")
    try:
        raw = parse_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ToylensError(f"{path}: invalid YAML{line}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise ToylensError(f"{path}: not a text file (YAML must be UTF-8)") from None
    if raw is None or raw == {}:
        raise ToylensError(f"{path}: {what} is empty")
    if not isinstance(raw, dict):
        raise ToylensError(f"{path}: the top level must be {shape}, not {kind(raw)}")
    return raw
