"""Walking a config's fields: their paths and docs, `--set KEY=VALUE` items, diffs between
configs, and one-line messages for validation errors that name the field."""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from toylens.config.messages import kind, shown, suggest
from toylens.config.sections import RunConfig
from toylens.config.tasks import TASK_CONFIGS, TaskConfig
from toylens.config.text import parse_yaml
from toylens.errors import ToylensError


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted names of the fields where two configs differ."""
    flat_a, flat_b = flatten(a.model_dump(mode="json")), flatten(b.model_dump(mode="json"))
    return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k))


def field_docs(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type, description) for every field, for `toylens config fields`."""
    rows = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _section_type(info.annotation)
        if isinstance(sub, _UnionSection):  # one row for the `name` that picks the section, then each member's
            tags = [m.model_fields["name"].default for m in sub.members]
            rows.append((f"{dotted}.name", "|".join(tags), f"Which {name}: {', '.join(tags)}."))
            for member, tag in zip(sub.members, tags):
                rows += [
                    (n, t, f"({tag}) {d}") for n, t, d in field_docs(member, dotted + ".") if n != f"{dotted}.name"
                ]
        elif sub is not None:
            rows += field_docs(sub, dotted + ".")
        else:
            typ = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
            rows.append((dotted, typ, " ".join((info.description or "").split())))
    return rows


# ------------------------------------------------------------------------------------ helpers


def set_field(raw: dict, key: str, value: Any, where: str = "--set") -> None:
    """Set the dotted field `key` (e.g. "train.weight_decay") of a raw config mapping in place."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ToylensError(f"{where} {key!r}: empty key in {key!r}")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ToylensError(f"{where} {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = copy_tree(value)


def field_paths(model: type[BaseModel] = RunConfig, prefix: str = "") -> set[str]:
    """Every dotted field name, sections included ("train", "train.l1", "train.l1.coef", ...)."""
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        paths.add(prefix + name)
        sub = _section_type(info.annotation)
        for member in sub.members if isinstance(sub, _UnionSection) else [sub] if sub is not None else []:
            paths |= field_paths(member, f"{prefix}{name}.")
    return paths


def apply_sets(
    raw: dict, items: Iterable[str], model: type[BaseModel] = RunConfig, *, section: str | None = None
) -> dict:
    """Apply `--set KEY=VALUE` items, in order, to `raw` (a mapping to be validated as `model`);
    returns `raw`. The one reader of --set, for run configs and the LLC settings alike.

    KEY is a dotted field of `model` ("train.weight_decay"). Where `model` is a named section of
    a bigger file (the LLC settings are the `llc:` section of a study), KEY may also start with
    that name: with section="llc", "llc.chains" is "chains". VALUE is read by `override_value`.
    Raises ToylensError naming the item when it has no "=", its KEY is not a field of `model`
    (with a suggestion), or an earlier item made a section a value (`train=1`, then `train.lr=0.1`).
    """
    paths = field_paths(model)
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ToylensError(f"--set {item!r}: expected KEY=VALUE")
        field = key.removeprefix(f"{section}.") if section else key
        if field not in paths:
            raise ToylensError(f"--set {key}: unknown key{suggest(field, paths)}")
        set_field(raw, field, override_value(model, field, text), where="--set")
    return raw


def override_value(model: type[BaseModel], key: str, text: str) -> Any:
    """The value of `--set key=text` for a field of `model`: `text` read as YAML (0.1, 1e-4, true,
    null, [a, b]), except that a field that takes text keeps `text` as written where YAML would
    read a number, a boolean or a date (`--set name=123` names a run "123")."""
    try:
        value = parse_yaml(text)
    except yaml.YAMLError:
        return text
    if value is not None and not isinstance(value, (str, list, dict)) and _takes_text(model, key):
        return text.strip()
    return value


def _takes_text(model: type[BaseModel] | _UnionSection, key: str) -> bool:
    """Whether the dotted field `key` of `model` accepts text (in any member of a union)."""
    head, _, rest = key.partition(".")
    for member in model.members if isinstance(model, _UnionSection) else [model]:
        info = member.model_fields.get(head)
        if info is None:
            continue
        if not rest:
            if _is_text(info.annotation):
                return True
            continue
        sub = _section_type(info.annotation)
        if sub is not None and _takes_text(sub, rest):
            return True
    return False


def _is_text(annotation: Any) -> bool:
    """str, str | None, or a choice of words (Literal["relu", "gelu"])."""
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_text(a) for a in get_args(annotation))
    return annotation is str


def format_validation_error(err: ValidationError, root: type[BaseModel]) -> str:
    """One line: the first error's dotted field, what is wrong, and a suggestion for typos."""
    first = err.errors()[0]
    field, parent = _walk_loc(first["loc"], root)
    typ, msg = first["type"], first["msg"]
    if typ == "extra_forbidden":
        valid = list(parent.model_fields) if parent else []
        text = f"{field}: unknown key{suggest(field.rsplit('.', 1)[-1], valid)}"
    elif typ == "missing":
        text = f"{field}: required field is missing"
    elif typ in ("union_tag_invalid", "union_tag_not_found"):  # the `name` that picks a section
        union = _section_type(parent.model_fields[field.rsplit(".", 1)[-1]].annotation) if parent else None
        tags = [m.model_fields["name"].default for m in getattr(union, "members", [])]
        given = first["input"] if isinstance(first["input"], dict) else {}
        known = "one of " + ", ".join(map(repr, tags))
        if "name" in given:
            got = given["name"]
            text = f"{field}.name: unknown name {shown(got)}{suggest(str(got), tags)}; {known}"
        else:
            text = f"{field}.name: required field is missing ({known})"
    else:
        msg = _YAML_WORDS.get(typ, msg).removeprefix("Value error, ")
        # A section's cross-field check that starts with one of its keys ("files: ...") names that key.
        key, _, rest = msg.partition(": ")
        info = parent.model_fields.get(field.rsplit(".", 1)[-1]) if parent and field else None  # not a list index
        section = _section_type(info.annotation) if info is not None else None
        if rest and section is not None and key in section.model_fields:
            field, msg = f"{field}.{key}", rest
        got = first.get("input")
        if isinstance(got, (dict, list)):  # a section's own checks get the whole mapping: not worth showing
            got_text = f" (got {kind(got)})" if typ.endswith("_type") else ""
        else:
            got_text = f" (got {shown(got)})"
        text = f"{field}: {msg}{got_text}" if field else f"{msg}{got_text}"
    more = len(err.errors()) - 1
    return text + (f" (and {more} more error{'s' * (more > 1)})" if more else "")


# Strict validation goes through JSON; its words for a mapping and a list, in YAML's.
_YAML_WORDS = {
    "model_type": "Input should be a mapping",
    "dict_type": "Input should be a mapping",
    "model_attributes_type": "Input should be a mapping",
    "list_type": "Input should be a list",
    "tuple_type": "Input should be a list",
}


def _walk_loc(loc: tuple, root: type[BaseModel]) -> tuple[str, type[BaseModel] | _UnionSection | None]:
    """Dotted field name for a pydantic error location, skipping union tags; and the section
    class holding the last key (for suggesting valid keys)."""
    names: list[str] = []
    model: type[BaseModel] | _UnionSection | None = root
    parent: type[BaseModel] | _UnionSection = root
    for part in loc:
        if model is None:
            names.append(str(part))
            continue
        if isinstance(part, str) and part in model.model_fields:
            parent = model
            names.append(part)
            model = _section_type(model.model_fields[part].annotation)
            continue
        tagged = _union_member(model, part)
        if tagged is not None:  # a discriminated-union tag such as "sort": not a user-visible key
            model = tagged
            continue
        parent = model
        names.append(str(part))
        model = None
    return ".".join(names), parent


def _section_type(annotation: Any) -> type[BaseModel] | _UnionSection | None:
    if annotation is TaskConfig:  # RunConfig.task: one of the registered task configs
        return _UnionSection(list(TASK_CONFIGS.values()))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(members) == 1 and set(get_args(annotation)) == {members[0], type(None)}:
        return members[0]  # an optional section (`vocab: VocabConfig | None`): its fields, documented
    if get_origin(annotation) is Union or members:
        return _UnionSection(members) if members else None
    return None


class _UnionSection:
    """Stand-in for a union of sections while walking an error location."""

    def __init__(self, members: list[type[BaseModel]]):
        self.members = members
        self.model_fields = {k: v for m in members for k, v in m.model_fields.items()}


def _union_member(model: Any, tag: Any) -> type[BaseModel] | None:
    for member in getattr(model, "members", []):
        name_field = member.model_fields.get("name")
        if name_field is not None and name_field.default == tag:
            return member
    return None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def copy_tree(d: Any) -> Any:
    """A copy of nested dicts and lists (the leaves shared), so that setting a field never edits the caller's."""
    if isinstance(d, dict):
        return {k: copy_tree(v) for k, v in d.items()}
    if isinstance(d, list):
        return [copy_tree(v) for v in d]
    return d
