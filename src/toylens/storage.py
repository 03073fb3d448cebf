"""Safe files: atomic writes, SHA-256 checksums, and safetensors reads that never touch pickle.

Every file toylens writes goes through `atomic_write` (temp file in the same directory, fsync,
rename, fsync of the directory), so a crash leaves either the old file or the new one, never half
of one. Reads of tensors go through `read_safetensors`, which refuses pickles and zip archives
(what `torch.save` writes) before parsing anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from toylens.errors import ToylensError


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix.

    A write that fails (a full disk, an I/O error, a read-only folder) removes its temp file,
    leaves any earlier `path` as it was, and raises `ToylensError` naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the mode an ordinary open() would
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:  # the rename is done; only its durability is in doubt
        raise ToylensError(f"{path}: written, but its folder could not be synced to disk ({e.strerror or e})") from None


def write_error(path: Path, err: OSError) -> ToylensError:
    """One line naming the file that could not be written, and why (full disk, read-only, ...)."""
    return ToylensError(f"{path}: cannot write ({err.strerror or err}); the previous contents, if any, are unchanged")


@functools.cache
def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temp files left by writes that a crash interrupted."""
    for tmp in Path(directory).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> bytes:
    """Serialise tensors to safetensors bytes; `metadata` values are stored as JSON strings."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return st_save(tensors, metadata=meta)


def refuse_non_safetensors(name: str, data: bytes) -> None:
    """Reject anything that is not laid out as safetensors (8-byte header length, then a JSON
    object) before a parser sees it, naming pickles and torch.save zip archives as such."""
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if 0 < header_len <= len(data) - 8 and data[8:9] == b"{":
        return
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ToylensError(f"{name}: is a Python pickle, not safetensors; toylens never loads pickles")
    if data[:4] == b"PK\x03\x04":
        raise ToylensError(
            f"{name}: is a zip archive (torch.save format, which contains a pickle), not safetensors; "
            "toylens never loads pickles"
        )
    raise ToylensError(f"{name}: truncated or not a safetensors file ({len(data)} bytes, no valid header)")


def bytes_to_tensors(name: str, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse safetensors bytes into (tensors, metadata); metadata values are decoded from JSON."""
    refuse_non_safetensors(name, data)
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = {k: json.loads(v) for k, v in header.get("__metadata__", {}).items()}
    except ToylensError:
        raise
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ToylensError(f"{name}: not a valid safetensors file ({e})") from None
    return tensors, meta


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file without a checksum (use `RunDir.read_tensors` inside a run)."""
    path = Path(path)
    if not path.is_file():
        raise ToylensError(f"{path}: file not found")
    return bytes_to_tensors(str(path), path.read_bytes())
