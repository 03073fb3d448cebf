"""Run directories: every file checksummed in a manifest, and `load` to get a model back.

    runs/<name>/
      config.yaml                     the resolved config
      metrics.jsonl                   one line per evaluation (epoch 0 = at initialisation)
      checkpoints/epoch-0003.safetensors        weights + JSON metadata (config, epoch, step)
      checkpoints/epoch-0003.state.safetensors  optimizer + RNG state, for --resume
      checkpoints/step-000120.safetensors       optional log-spaced extra checkpoints
      final.safetensors               the final checkpoint's weights as one standalone file
      summary.json                    final and best metrics
      task/vocab.json                 what the task fitted to its data (a compact vocabulary), if any
      manifest.json                   SHA-256 and size of every file above, and the checkpoint list

Checkpoint names and what "final", "best", "3" or "all" mean are in `toylens.checkpoints`.
Every public function that takes a run takes a `RunLike`: a path (str or os.PathLike) or a
`RunDir`; `as_rundir` turns one into a RunDir, refusing a path that is not a run directory.
Every read inside a run goes through `RunDir.read_bytes`, which refuses a file that is missing,
not in the manifest, truncated, altered, or a pickle, with a one-line message naming it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from toylens.checkpoints import CheckpointInfo, Spec, resolve_one
from toylens.device import DeviceLike, resolve_device
from toylens.errors import ToylensError
from toylens.storage import (
    atomic_write,
    atomic_write_json,
    bytes_to_tensors,
    read_safetensors,
    refuse_non_safetensors,
    sha256_bytes,
    tensors_to_bytes,
)

if TYPE_CHECKING:
    from toylens.config import RunConfig
    from toylens.model import Transformer
    from toylens.tasks import Task

MANIFEST = "manifest.json"
TASK_FOLDER = "task"


class RunDir:
    """A run directory whose files are written atomically and read back only if verified.

    A RunDir is also a path (`os.fspath(run)`, `Path(run)`), so it goes wherever a path does."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- manifest -----------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        p = self.path / MANIFEST
        if not p.is_file():
            if not self.path.is_dir():
                raise ToylensError(f"{self.path}: run directory not found")
            raise ToylensError(f"{p}: missing; {self.path} is not a toylens run directory")
        try:
            m = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ToylensError(f"{p}: not valid JSON ({e})") from None
        m.setdefault("files", {})
        m.setdefault("checkpoints", {})
        return m

    def _update_manifest(self, fn: Any) -> None:
        m = self.manifest() if self.exists() else {"format": "toylens-run/1", "files": {}, "checkpoints": {}}
        fn(m)
        atomic_write_json(self.path / MANIFEST, m)

    # --- verified bytes -----------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        atomic_write(self.path / rel, data)
        entry = {"sha256": sha256_bytes(data), "bytes": len(data)}
        self._update_manifest(lambda m: m["files"].__setitem__(rel, entry))

    def read_bytes(self, rel: str) -> bytes:
        path = self.path / rel
        entry = self.manifest()["files"].get(rel)
        if entry is None:
            raise ToylensError(f"{path}: not listed in the run manifest; refusing an unverified file")
        if not path.is_file():
            raise ToylensError(f"{path}: missing (the run manifest lists it)")
        data = path.read_bytes()
        if rel.endswith(".safetensors"):
            refuse_non_safetensors(str(path), data)
        if len(data) < entry["bytes"]:
            raise ToylensError(f"{path}: truncated ({len(data)} of {entry['bytes']} bytes)")
        if len(data) != entry["bytes"] or sha256_bytes(data) != entry["sha256"]:
            raise ToylensError(f"{path}: SHA-256 does not match the run manifest (file altered or corrupted)")
        return data

    def has(self, rel: str) -> bool:
        return self.exists() and rel in self.manifest()["files"]

    def remove(self, rel: str) -> None:
        (self.path / rel).unlink(missing_ok=True)
        self._update_manifest(lambda m: m["files"].pop(rel, None))

    # --- typed helpers ------------------------------------------------------------------
    def write_tensors(self, rel: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
        self.write_bytes(rel, tensors_to_bytes(tensors, metadata))

    def read_tensors(self, rel: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return bytes_to_tensors(str(self.path / rel), self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_jsonl(self, rel: str, rows: list[dict]) -> None:
        self.write_bytes(rel, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

    def read_jsonl(self, rel: str) -> list[dict]:
        if not self.has(rel):
            return []
        return [json.loads(line) for line in self.read_bytes(rel).decode().splitlines() if line.strip()]

    def append_jsonl(self, rel: str, row: dict) -> None:
        self.write_jsonl(rel, self.read_jsonl(rel) + [row])

    # --- task files ---------------------------------------------------------------------
    def write_task_files(self, files: dict[str, Any]) -> None:
        """Save what a task fitted to its data (`Task.saved_files`) as `task/<name>`. A run that
        already has a file keeps it only if it is the same: a resumed run whose data changed since
        it started is refused rather than continued with a different mapping."""
        for name, obj in files.items():
            rel = f"{TASK_FOLDER}/{name}"
            if self.has(rel):
                if self.read_json(rel) != json.loads(json.dumps(obj)):
                    raise ToylensError(
                        f"{self.path / rel}: differs from what the task fits to its data now (the data or "
                        "tokenizer changed since the run started); use --overwrite to restart the run"
                    )
                continue
            self.write_json(rel, obj)

    def task_files(self) -> dict[str, Any]:
        """The task files this run saved (name -> JSON), each verified against the manifest."""
        prefix = f"{TASK_FOLDER}/"
        names = [rel for rel in self.manifest()["files"] if rel.startswith(prefix)]
        return {rel[len(prefix) :]: self.read_json(rel) for rel in sorted(names)}

    # --- config, checkpoints ------------------------------------------------------------
    def config(self) -> RunConfig:
        from toylens.config import parse_yaml, validate_config

        raw = parse_yaml(self.read_bytes("config.yaml"))
        return validate_config(raw, str(self.path / "config.yaml"))

    def register_checkpoint(self, name: str, *, epoch: int, step: int, resumable: bool) -> None:
        info = {"epoch": epoch, "step": step, "resumable": resumable}
        self._update_manifest(lambda m: m["checkpoints"].__setitem__(name, info))

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every registered checkpoint, ordered by training step (epoch checkpoints first on ties)."""
        items = [CheckpointInfo(name=k, **v) for k, v in self.manifest()["checkpoints"].items()]
        return sorted(items, key=lambda c: (c.step, not c.name.startswith("epoch"), c.name))


RunLike = str | os.PathLike | RunDir
"""A run as public functions take it: its directory as a str or path, or a RunDir."""


def as_rundir(run: RunLike) -> RunDir:
    """`run` as a RunDir; a path must be a run directory (ToylensError naming it otherwise).
    A RunDir is taken as it is (a run being written may not have its manifest yet)."""
    if isinstance(run, RunDir):
        return run
    if not isinstance(run, (str, os.PathLike)):
        raise TypeError(f"expected a run directory (str, os.PathLike or RunDir), got {type(run).__name__}")
    rundir = RunDir(run)
    if not rundir.exists():
        rundir.manifest()  # raises: "run directory not found" or "... is not a toylens run directory"
    return rundir


class Loaded:
    """A model restored from a run: `.model`, `.config`, `.task` (built on first use), `.meta`,
    and `.device`, where the model is (inputs go there: `batch.to(run.device)`)."""

    def __init__(self, model: Transformer, config: RunConfig, meta: dict, run: RunDir | None):
        self.model, self.config, self.meta, self.run = model, config, meta, run

    @functools.cached_property
    def task(self) -> Task:
        """The run's task: built from its config, with what the run saved of it (`task/`, e.g. a
        compact vocabulary's mapping). From a lone checkpoint file it is fitted to the data again."""
        from toylens.tasks import build_task

        return build_task(self.config.task, self.run.task_files() if self.run is not None else None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def epoch(self) -> int:
        return self.meta.get("epoch", -1)

    @property
    def step(self) -> int:
        return self.meta.get("step", -1)

    def __repr__(self) -> str:
        return f"Loaded({self.config.name!r}, epoch={self.epoch}, step={self.step})"


def load(run: RunLike, checkpoint: Spec = "final", device: DeviceLike = "auto") -> Loaded:
    """The model at a checkpoint of a run, with its config and task, on `device` ("auto": cuda
    when available, else cpu).

    `run` is a run directory (checksums are verified against its manifest) or a single
    `.safetensors` checkpoint file (which carries its config in its metadata).
    `checkpoint` is one checkpoint in the vocabulary of `toylens.checkpoints`: "final", "best",
    an epoch number, or a name such as "step-000120".
    """
    from toylens.config import validate_config
    from toylens.model import Transformer

    dev = resolve_device(device)
    path = Path(run)
    if path.suffix == ".safetensors" and not isinstance(run, RunDir):
        tensors, meta = read_safetensors(path)
        rundir = None
    else:
        rundir = as_rundir(run)
        tensors, meta = rundir.read_tensors(resolve_one(rundir, checkpoint, "load").file)
    if "config" not in meta:
        raise ToylensError(f"{path}: checkpoint has no toylens config in its metadata")
    cfg = validate_config(meta["config"], f"{path} (checkpoint metadata)")
    model = Transformer(cfg.model, seed=None)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ToylensError(
            f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.to(dev).eval()
    return Loaded(model, cfg, meta, rundir)
