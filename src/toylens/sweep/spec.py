"""Sweep specs: a base config, the fields to vary, seeds -> a list of validated member configs.

    name: sort-weight-decay
    base: ../sort-no-decay.yaml          # a run config, relative to this file (or an inline mapping)
    set: [train.epochs=8]                # optional: overrides for every member, as with --set
    method: grid                         # grid: every combination; random: `count` draws
    parameters:
      train.weight_decay: [0.0, 0.03, 0.1, 0.3, 1.0]
    seeds: [0, 1, 2]                     # every point is trained with every seed

In a random sweep a parameter is a list (drawn uniformly) or a distribution:
`{distribution: uniform, min: 0, max: 1}`, `log_uniform` (min > 0), `int` (min..max inclusive) or
`{distribution: choice, values: [...]}`. Draw i uses its own generator seeded by (sample_seed, i),
so raising `count` keeps the members already drawn.

`set` fixes fields for every member (applied to the base before the varied values, read as
`toylens train --set` reads them), so a spec states what it relies on even when the base config
file is tuned for something else; a field is either set or varied, not both.

Member names are deterministic: grid members are named after their values
(`sort-weight-decay-weight_decay0.1-seed2`), random members after their draw
(`lr-search-007-seed0`). Every member config is validated before anything runs; errors are one
line naming the spec file and the field, like run configs, and types are as strict (`count: "3"`
or a value of `"0.1"` for a float field is an error, not a conversion).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from toylens.config import (
    RunConfig,
    Section,
    apply_sets,
    field_paths,
    format_validation_error,
    read_yaml,
    set_field,
    shipped,
    suggest,
    validate_config,
    validate_input,
)
from toylens.errors import ToylensError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Uniform(Section):
    """A float drawn uniformly from [min, max]."""

    distribution: Literal["uniform"]
    min: float
    """Lower bound."""
    max: float
    """Upper bound."""

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class LogUniform(Uniform):
    """A float whose logarithm is uniform on [log min, log max] (learning rates, decays)."""

    distribution: Literal["log_uniform"]  # type: ignore[assignment]
    min: float = Field(gt=0)
    """Lower bound (> 0)."""


class IntRange(Section):
    """An integer drawn uniformly from min..max, both included."""

    distribution: Literal["int"]
    min: int
    """Smallest value."""
    max: int
    """Largest value."""

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Choice(Section):
    """One of the listed values, each equally likely."""

    distribution: Literal["choice"]
    values: list[Any] = Field(min_length=1)
    """The values to choose from."""


Distribution = Annotated[Uniform | LogUniform | IntRange | Choice, Field(discriminator="distribution")]
_DISTRIBUTION = TypeAdapter(Distribution)


class WandbSettings(Section):
    """Where `--wandb` logs the sweep (the W&B group is the sweep name)."""

    project: str = "toylens"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); default: your W&B default."""
    tags: list[str] = []
    """Tags added to every member's W&B run."""


class SweepSpec(Section):
    """A sweep: members = base config x parameter values x seeds."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    """Sweep name: members live in <out>/<name>/<member>."""
    base: str | dict[str, Any]
    """The base run config: a YAML path (relative to the spec file) or an inline mapping."""
    set: list[str] = []
    """Overrides for every member, as with `toylens train --set` (e.g. [train.epochs=2]), applied
    to the base config before the varied parameters; a field cannot be both set and varied."""
    method: Literal["grid", "random"] = "grid"
    """grid: every combination of the listed values; random: `count` independent draws."""
    parameters: dict[str, Any] = {}
    """Dotted config field -> list of values (grid, or uniform choice in random), or a
    distribution (random only)."""
    seeds: list[int] = Field([0], min_length=1)
    """Run seeds; every point of the sweep is trained once per seed."""
    count: int | None = Field(None, ge=1, le=100_000)
    """Number of random draws (random sweeps only)."""
    sample_seed: int = Field(0, ge=0)
    """Seed of the random draws."""
    wandb: WandbSettings = WandbSettings()
    """W&B settings used with --wandb."""

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds: must be distinct non-negative integers (got {self.seeds})")
        if self.method == "random" and self.count is None:
            raise ValueError("count: required when method is random")
        if self.method == "grid" and self.count is not None:
            raise ValueError("count: only random sweeps take a count (use method: random)")
        valid = field_paths()
        fixed = set()
        for item in self.set:
            key = item.partition("=")[0].strip()
            if "=" not in item or not key:
                raise ValueError(f"set: {item!r}: expected KEY=VALUE")
            if key not in valid:
                raise ValueError(f"set: {key!r} is not a config field{suggest(key, valid)}")
            if key in ("name", "seed"):
                raise ValueError(f"set: {key} is set by the sweep (use `seeds:` for seeds)")
            fixed.add(key)
        for key, value in self.parameters.items():
            if key in fixed:
                raise ValueError(f"parameters.{key}: also in set; a field is either fixed or varied")
            if key in ("name", "seed"):
                raise ValueError(f"parameters.{key}: set by the sweep (use `seeds:` for seeds)")
            if key not in valid:
                raise ValueError(f"parameters: {key!r} is not a config field{suggest(key, valid)}")
            _check_values(key, value, self.method)
        return self


def _check_values(key: str, value: Any, method: str) -> None:
    if isinstance(value, list):
        if not value:
            raise ValueError(f"parameters.{key}: the list of values is empty")
        return
    if not isinstance(value, dict):
        raise ValueError(f"parameters.{key}: expected a list of values or a distribution (got {value!r})")
    if method == "grid":
        raise ValueError(f"parameters.{key}: distributions need method: random (a grid takes a list of values)")
    name = value.get("distribution")
    kind = DISTRIBUTIONS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"parameters.{key}.distribution: expected one of {', '.join(DISTRIBUTIONS)} (got {name!r})")
    try:
        kind.model_validate(value, strict=True)  # `value` is JSON data already (the spec came through validate_input)
    except ValidationError as e:
        raise ValueError(f"parameters.{key}.{format_validation_error(e, kind)}") from None


DISTRIBUTIONS: dict[str, type[Section]] = {
    "uniform": Uniform,
    "log_uniform": LogUniform,
    "int": IntRange,
    "choice": Choice,
}


@dataclass(frozen=True)
class Member:
    """One run of a sweep: its name, the values the sweep gave it, and its validated config."""

    name: str
    params: dict[str, Any]
    seed: int
    config: RunConfig = field(repr=False)


def load_sweep(source: str | Path | dict) -> tuple[SweepSpec, Path]:
    """Parse and validate a sweep spec (file or mapping); returns it and the folder `base` is
    relative to."""
    where, root = "sweep spec", Path.cwd()
    if isinstance(source, dict):
        raw = source
    else:
        path = shipped(Path(source))
        where, root = str(path), path.parent
        raw = read_yaml(path, "sweep spec", "a mapping (name, base, parameters, ...)")
    return validate_input(SweepSpec, raw, where), root


def expand(spec: SweepSpec, root: Path = Path("."), where: str = "sweep spec") -> list[Member]:
    """Every member of the sweep with its validated config (raises on the first bad member)."""
    base = copy.deepcopy(_base_mapping(spec, root, where))  # YAML data: may hold a date, which validation names
    try:
        apply_sets(base, spec.set)
    except ToylensError as e:
        raise ToylensError(f"{where}: set: {e}") from None
    points = _grid(spec) if spec.method == "grid" else _draws(spec)
    members = []
    for i, point in enumerate(points):
        for seed in spec.seeds:
            name = _member_name(spec, i, point, seed)
            raw = copy.deepcopy(base)
            for key, value in point.items():
                set_field(raw, key, value, where=f"{where}: parameters")
            raw.update(name=name, seed=seed)
            members.append(Member(name, point, seed, validate_config(raw, f"{where} (member {name})")))
    names = [m.name for m in members]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ToylensError(f"{where}: members share the name {clashes[0]!r}; give the values distinct spellings")
    return members


def _base_mapping(spec: SweepSpec, root: Path, where: str) -> dict:
    if isinstance(spec.base, dict):
        return spec.base
    path = root / spec.base
    if not path.is_file():
        raise ToylensError(f"{where}: base: config file {path} not found")
    return read_yaml(path, "config", "a mapping of sections (task, model, train)")


def _grid(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.parameters)
    return [dict(zip(keys, values)) for values in itertools.product(*(spec.parameters[k] for k in keys))]


def _draws(spec: SweepSpec) -> list[dict[str, Any]]:
    draws = []
    for i in range(spec.count or 0):
        rng = np.random.default_rng([spec.sample_seed, i])
        draws.append({key: _draw(value, rng) for key, value in spec.parameters.items()})
    return draws


def _draw(value: Any, rng: np.random.Generator) -> Any:
    if isinstance(value, list):
        return value[int(rng.integers(len(value)))]
    dist = _DISTRIBUTION.validate_python(value)
    if isinstance(dist, LogUniform):
        return float(math.exp(rng.uniform(math.log(dist.min), math.log(dist.max))))
    if isinstance(dist, Uniform):
        return float(rng.uniform(dist.min, dist.max))
    if isinstance(dist, IntRange):
        return int(rng.integers(dist.min, dist.max + 1))
    return dist.values[int(rng.integers(len(dist.values)))]


def _member_name(spec: SweepSpec, index: int, point: dict[str, Any], seed: int) -> str:
    """Grid: the sweep name, each varied field's last part and value, the seed. Random: the draw
    index. Values that do not spell well (long, or lists) fall back to a short hash."""
    if spec.method == "random":
        return f"{spec.name}-{index:03d}-seed{seed}"
    leaves = [k.rsplit(".", 1)[-1] for k in point]
    parts = []
    for key, leaf in zip(point, leaves):
        label = leaf if leaves.count(leaf) == 1 else key.replace(".", "_")
        parts.append(label + _spell(point[key]))
    name = "-".join([spec.name, *parts, f"seed{seed}"])
    if len(name) > 120 or not re.match(NAME_PATTERN, name):
        digest = hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{spec.name}-{digest}-seed{seed}"
    return name


def _spell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}".replace("+", "")  # 1e+300 -> 1e300: run names allow no "+"
    if isinstance(value, (int, str)):
        return re.sub(r"[^A-Za-z0-9._-]", "_", str(value))[:40]
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]
