"""`RunDir`: a run directory whose files are written atomically and read back only if verified.

Every file goes in through `write_bytes` (atomic: temp file, fsync, rename; then its SHA-256 and
size are recorded in `manifest.json`) and comes out through `read_bytes`, which refuses a file
that is missing, not in the manifest, truncated, altered, or a pickle, with a one-line message
naming it. The layout (which file is where) is `rundir.layout`.

The manifest is parsed once and kept while the file is unchanged: each read checks its stat
(inode, size, mtime; every rewrite is a rename, so a new inode), so a long analysis does not
re-parse a manifest of hundreds of entries for every file it reads, and a manifest rewritten by
another process is still seen.

A public function takes a run as a `RunLike` (its directory as a str or path, or a RunDir) and
turns it into a RunDir once, with `as_rundir`; everything below it takes the RunDir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from toylens.config import RunConfig, parse_yaml, validate_config
from toylens.errors import ToylensError
from toylens.rundir.layout import MANIFEST, RUN_FORMAT, TASK_FOLDER, CheckpointInfo
from toylens.storage import (
    atomic_write,
    atomic_write_json,
    bytes_to_tensors,
    refuse_non_safetensors,
    sha256_bytes,
    tensors_to_bytes,
)

Manifest = dict[str, Any]


class RunDir:
    """A run directory (see the module docstring). A RunDir is also a path (`os.fspath(run)`,
    `Path(run)`), so it goes wherever a path does."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._manifest: Manifest | None = None
        self._stamp: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- manifest -----------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def manifest(self) -> Manifest:
        """The parsed manifest (read again only when the file changed). Treat it as read-only."""
        p = self.path / MANIFEST
        try:
            st = p.stat()
        except FileNotFoundError:
            if not self.path.is_dir():
                raise ToylensError(f"{self.path}: run directory not found") from None
            raise ToylensError(f"{p}: missing; {self.path} is not a toylens run directory") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._manifest is None or stamp != self._stamp:
            try:
                m = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ToylensError(f"{p}: not valid JSON ({e})") from None
            m.setdefault("files", {})
            m.setdefault("checkpoints", {})
            self._manifest, self._stamp = m, stamp
        return self._manifest

    def update_manifest(self, change: Callable[[Manifest], None]) -> None:
        """Apply `change` to a copy of the manifest and write it (the caller holds the run's lock)."""
        if self.exists():
            old = self.manifest()
            m = {**old, "files": dict(old["files"]), "checkpoints": dict(old["checkpoints"])}
        else:
            m = {"format": RUN_FORMAT, "files": {}, "checkpoints": {}}
        change(m)
        self._manifest = None  # re-read (and re-stamped) on the next access
        atomic_write_json(self.path / MANIFEST, m)

    def listed(self, folder: str) -> list[str]:
        """The files the manifest lists under `folder` (relative paths, sorted)."""
        prefix = folder.rstrip("/") + "/"
        return sorted(rel for rel in self.manifest()["files"] if rel.startswith(prefix)) if self.exists() else []

    # --- verified bytes -----------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        atomic_write(self.path / rel, data)
        entry = {"sha256": sha256_bytes(data), "bytes": len(data)}
        self.update_manifest(lambda m: m["files"].__setitem__(rel, entry))

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
        self.update_manifest(lambda m: m["files"].pop(rel, None))

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
        return {rel[len(prefix) :]: self.read_json(rel) for rel in self.listed(TASK_FOLDER)}

    # --- config and checkpoints ---------------------------------------------------------
    def config(self) -> RunConfig:
        return validate_config(parse_yaml(self.read_bytes("config.yaml")), str(self.path / "config.yaml"))

    def register_checkpoint(self, name: str, *, epoch: int, step: int, resumable: bool) -> None:
        info = {"epoch": epoch, "step": step, "resumable": resumable}
        self.update_manifest(lambda m: m["checkpoints"].__setitem__(name, info))

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
    rundir.manifest()  # raises: "run directory not found" or "... is not a toylens run directory"
    return rundir


def enclosing_run(path: Path) -> tuple[RunDir, str] | None:
    """The run directory a file sits in (the nearest folder above it with a toylens manifest) and
    the file's path relative to it; None for a file outside any run."""
    path = Path(path).absolute()
    for folder in path.parents:
        manifest = folder / MANIFEST
        if manifest.is_file():
            try:
                is_run = json.loads(manifest.read_text()).get("format") == RUN_FORMAT
            except (OSError, ValueError, AttributeError):
                is_run = False
            if is_run:
                return RunDir(folder), path.relative_to(folder).as_posix()
    return None
