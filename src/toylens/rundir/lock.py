"""One writer per run directory: `RUN/.lock`, held for as long as a process writes into the run.

    with run_lock(path, "train", create=True):   # creates `path` if needed
        ...                           # train, analyze or estimate the LLC into it

Training, `analyze` and the LLC all rewrite `manifest.json` after every file they write, so two
of them at once in one run directory would lose each other's entries. The lock is an advisory
`flock` on `RUN/.lock`, which records the holder's pid, host and job while it is held. A second
process gets a `ToylensError` (exit 2) naming the holder's pid. The kernel drops the lock when
its holder exits, however it exits, so the pid that a killed process leaves in the file is a
stale lock: the next process takes it over (and says so). Whoever takes the lock deletes the
temp files that writes interrupted by a crash left behind (`storage.remove_stale_temp_files`): no
one else can be writing. Within one process a run is locked once; a nested `run_lock` on the same
directory (a study that trains and then analyses) is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from toylens.errors import ToylensError
from toylens.storage import remove_stale_temp_files

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against a second writer
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("toylens")

LOCK = ".lock"
_held: dict[Path, str] = {}  # run directories this process has locked, and for what


class RunLocked(ToylensError):
    """Another live process is writing into the run directory."""


@contextlib.contextmanager
def run_lock(path: str | Path, job: str, *, create: bool = False) -> Iterator[None]:
    """Hold `path/.lock` while the block runs (see the module docstring); `create` makes the
    directory first (training), otherwise it must exist."""
    path = Path(path)
    if not create and not path.is_dir():
        raise ToylensError(f"{path}: run directory not found")
    key = path.resolve()
    if key in _held or fcntl is None:
        yield
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ToylensError(f"{path / LOCK}: cannot create the run lock ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(
                f"{path}: in use by {_describe(_holder(fd))}; wait for it to finish or stop it, then rerun"
            ) from None
        previous = _holder(fd)
        if previous.get("pid") not in (None, os.getpid()):
            log.info("%s: took over the lock of %s, which is no longer running", path, _describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "job": job,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            ).encode(),
            0,
        )
        _held[key] = job
        remove_stale_temp_files(path)
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # a clean exit leaves an empty file; only a killed holder leaves its pid
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "another process"
    where = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
    return f"pid {holder['pid']}{where} ({holder.get('job', '?')}, since {holder.get('since', '?')})"
