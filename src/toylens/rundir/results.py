"""Typed analysis results: dataclasses saved as JSON (scalars, tables, labels) + safetensors (arrays).

Every result class derives from `Result`. `result.save(run, "analysis/epoch-0012/head_scores")`
writes `head_scores.safetensors` (every tensor field; a `dict[str, Tensor]` field is stored as
`field/key` entries) and then `head_scores.json`:

    {"format": "toylens-result/1", "type": "HeadScores",
     "fields": {...every non-tensor field...},
     "arrays": {"scores/induction": {"shape": [2, 4], "dtype": "float32", "axes": ["layer", "head"]}}}

The JSON is written last, so its presence means the result is complete. Both files go through
`RunDir` (atomic, checksummed); `load_result(run, rel)` reads either back as the right class
without knowing it in advance, which is what the report does. A class registers itself when its
module is imported; a type not registered yet is looked up by importing the packages that define
result types (`RESULT_PACKAGES`), so a result loads whatever the program imported before.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from toylens.errors import ToylensError
from toylens.rundir.run import RunDir, RunLike, as_rundir

FORMAT = "toylens-result/1"
RESULT_TYPES: dict[str, type[Result]] = {}
RESULT_PACKAGES = ("toylens.analysis", "toylens.development")
"""The packages whose modules define the result types toylens writes (imported on first need)."""
R = TypeVar("R", bound="Result")


@dataclasses.dataclass
class Result:
    """Base of saved results. Subclasses are dataclasses; `axes` names each array's dimensions."""

    axes: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        RESULT_TYPES[cls.__name__] = cls

    def save(self, run: RunDir, rel: str) -> None:
        """Write `rel.safetensors` (if there are arrays) and then `rel.json`."""
        arrays: dict[str, Tensor] = {}
        plain: dict[str, Any] = {}
        kinds: dict[str, Any] = {}  # field -> "tensor", or the keys of a dict of tensors (in order)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                arrays[f.name] = value
                kinds[f.name] = "tensor"
            elif isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values()):
                arrays.update({f"{f.name}/{k}": v for k, v in value.items()})
                kinds[f.name] = list(value)
            else:
                plain[f.name] = value
        axes = self.array_axes()
        info = {
            name: {
                "shape": list(t.shape),
                "dtype": str(t.dtype).removeprefix("torch."),
                "axes": list(axes.get(name.split("/")[0], ())),
            }
            for name, t in arrays.items()
        }
        if arrays:
            run.write_tensors(f"{rel}.safetensors", arrays)
        run.write_json(
            f"{rel}.json",
            {"format": FORMAT, "type": type(self).__name__, "fields": plain, "kinds": kinds, "arrays": info},
        )

    def array_axes(self) -> dict[str, tuple[str, ...]]:
        """Axis names of each array field (a dict field's entries share its axes)."""
        return self.axes

    @classmethod
    def load(cls: type[R], run: RunLike, rel: str) -> R:
        result = load_result(run, rel)
        if not isinstance(result, cls):
            raise ToylensError(
                f"{as_rundir(run).path / rel}.json: holds a {type(result).__name__}, not a {cls.__name__}"
            )
        return result


def load_result(run: RunLike, rel: str) -> Result:
    """Read a saved result back as its own class (named in its JSON), e.g.
    load_result("runs/sort-no-decay", "analysis/epoch-0012/circuits")."""
    run = as_rundir(run)
    doc = run.read_json(f"{rel}.json")
    if doc.get("format") != FORMAT:
        raise ToylensError(f"{run.path / rel}.json: not a toylens result (format {doc.get('format')!r})")
    cls = result_type(doc.get("type"))
    if cls is None:
        raise ToylensError(f"{run.path / rel}.json: unknown result type {doc.get('type')!r}")
    values = dict(doc["fields"])
    if doc["arrays"]:
        tensors, _ = run.read_tensors(f"{rel}.safetensors")
        for name, kind in doc["kinds"].items():
            values[name] = tensors[name] if kind == "tensor" else {k: tensors[f"{name}/{k}"] for k in kind}
    try:
        return cls(**values)
    except TypeError as e:
        raise ToylensError(f"{run.path / rel}.json: does not match {cls.__name__} ({e})") from None


def result_type(name: Any) -> type[Result] | None:
    """The registered `Result` class of that name, importing `RESULT_PACKAGES` if needed."""
    if name not in RESULT_TYPES:
        for package in RESULT_PACKAGES:
            importlib.import_module(package)
    return RESULT_TYPES.get(name)


def has_result(run: RunDir, rel: str) -> bool:
    """Whether a complete result is recorded at `rel` (its JSON is written last)."""
    return run.has(f"{rel}.json")
