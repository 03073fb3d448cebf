"""Fault injection: what toylens does when the disk, the file system or another process gets in
the way. Each case states its expected outcome; all of them end the same way: one line on stderr
naming the file, exit code 2, nothing already written lost, and the next run recovering with no
manual cleanup, its final weights bit-identical to an uninterrupted run.

A crash between fsync and rename, and a kill inside a checkpoint write, are SIGKILLs of a real
process: see tests/train/test_resume.py::test_training_killed_inside_a_write_resumes_bit_identical.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY
from typer.testing import CliRunner

from toylens import load, train
from toylens.cli import app
from toylens.config import validate_config
from toylens.rundir import RunDir
from toylens.storage import sha256_file

RAW = {**TINY, "name": "faulty", "train": {**TINY["train"], "epochs": 3}}


def cli(*args: str):
    result = CliRunner().invoke(app, [*args, "--no-progress"] if args[0] in ("train", "analyze") else list(args))
    return result.exit_code, result.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    return train(validate_config(RAW), out, progress=False, device="cpu").run_dir


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(RAW))
    return path


def same_final(a: Path, b: Path) -> bool:
    wa, wb = RunDir(a).read_tensors("final.safetensors")[0], RunDir(b).read_tensors("final.safetensors")[0]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def assert_intact(run: Path) -> None:
    """Every file the manifest lists is there with its checksum, and no temp file is left."""
    for rel, entry in RunDir(run).manifest()["files"].items():
        assert sha256_file(run / rel) == entry["sha256"], rel
    assert not list(run.rglob("*.tmp"))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@contextlib.contextmanager
def failing_write(monkeypatch, target: str, code: int):
    """Writes of a file named `target` fail part-way: half the bytes reach the temp file, then
    its fsync raises OSError(code), as a full disk (ENOSPC) or a failing device (EIO) would."""
    real_fsync = os.fsync

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(f".{target}."):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        yield


@contextlib.contextmanager
def read_only(monkeypatch, folder: Path):
    """`folder` becomes read-only: its mode bits for ordinary users, and, since root ignores
    those (CI runs as root), creating or opening files for writing under it fails with EROFS,
    as on a file system remounted read-only."""
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    real_open, real_mkstemp = os.open, tempfile.mkstemp

    def under(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(folder.resolve())

    def guarded_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and under(dir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    try:
        with monkeypatch.context() as m:
            m.setattr(os, "open", guarded_open)
            m.setattr(tempfile, "mkstemp", guarded_mkstemp)
            yield
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_write_failing_part_way(config, reference, tmp_path, monkeypatch, code):
    """Expected: exit 2 naming the checkpoint being written; the earlier checkpoints, metrics and
    manifest intact, no temp file; --resume finishes the run as if nothing had happened."""
    out = tmp_path / "runs"
    with failing_write(monkeypatch, "epoch-0002.safetensors", code):
        status, stderr = cli("train", str(config), "--out", str(out), "--device", "cpu")
    line = one_line(stderr)
    assert status == 2 and f"{out / 'faulty' / 'checkpoints' / 'epoch-0002.safetensors'}: cannot write" in line
    assert os.strerror(code) in line
    run = out / "faulty"
    assert_intact(run)
    assert [c.name for c in RunDir(run).checkpoints()] == ["epoch-0000", "epoch-0001"]
    assert load(run, 1).epoch == 1
    assert cli("train", str(config), "--out", str(out), "--device", "cpu", "--resume")[0] == 0
    assert same_final(reference, run)


def test_a_manifest_that_lost_its_last_entry(config, reference, tmp_path):
    """The manifest as it was before the last write of the run (summary.json) and before the
    last checkpoint was registered. Expected: --resume redoes the last epoch from epoch 2 and
    ends identical; a manifest that lost only summary.json just gets the summary back."""
    out = tmp_path / "runs"
    assert cli("train", str(config), "--out", str(out), "--device", "cpu")[0] == 0
    path = out / "faulty" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"].pop("summary.json")
    path.write_text(json.dumps(manifest))
    assert cli("train", str(config), "--out", str(out), "--device", "cpu", "--resume")[0] == 0
    assert same_final(reference, out / "faulty") and RunDir(out / "faulty").has("summary.json")
    manifest = json.loads(path.read_text())
    for rel in (
        "summary.json",
        "final.safetensors",
        "checkpoints/epoch-0003.safetensors",
        "checkpoints/epoch-0003.state.safetensors",
    ):
        manifest["files"].pop(rel)
    manifest["checkpoints"].pop("epoch-0003")
    path.write_text(json.dumps(manifest))
    assert cli("train", str(config), "--out", str(out), "--device", "cpu", "--resume")[0] == 0
    assert same_final(reference, out / "faulty")
    assert [r["epoch"] for r in RunDir(out / "faulty").read_jsonl("metrics.jsonl")] == [0, 1, 2, 3]


@pytest.mark.parametrize("finished", [False, True])
def test_a_half_written_last_line_of_metrics(config, reference, tmp_path, monkeypatch, finished):
    """metrics.jsonl ends in half a line (a copy or an editor cut short). Expected: reading it
    fails with one line naming it; --resume rewrites it from the last checkpoint's state (an
    unfinished run then trains on), and the rows equal the uninterrupted run's."""
    out, run = tmp_path / "runs", tmp_path / "runs" / "faulty"
    if finished:
        assert cli("train", str(config), "--out", str(out), "--device", "cpu")[0] == 0
    else:
        with failing_write(monkeypatch, "epoch-0002.safetensors", errno.EIO):
            assert cli("train", str(config), "--out", str(out), "--device", "cpu")[0] == 2
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 30, "test/lo')
    status, stderr = cli("report", str(run), "-o", str(tmp_path / "r.html"))
    assert status == 2 and f"{run / 'metrics.jsonl'}: SHA-256 does not match" in one_line(stderr)
    assert cli("train", str(config), "--out", str(out), "--device", "cpu", "--resume")[0] == 0
    assert same_final(reference, run)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(RunDir(run).read_jsonl("metrics.jsonl")) == strip(RunDir(reference).read_jsonl("metrics.jsonl"))


def test_a_run_directory_that_became_read_only(config, reference, tmp_path, monkeypatch):
    """Expected: training into it (and analysing it) stops at once with one line naming the
    run's lock file; nothing in it changes; reading it (load, report elsewhere) still works; once
    writable again, --resume finishes the run."""
    out, run = tmp_path / "runs", tmp_path / "runs" / "faulty"
    with failing_write(monkeypatch, "epoch-0002.safetensors", errno.EIO):
        cli("train", str(config), "--out", str(out), "--device", "cpu")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with read_only(monkeypatch, run):
        for args in (
            ["train", str(config), "--out", str(out), "--device", "cpu", "--resume"],
            ["analyze", str(run), "--checkpoint", "1"],
        ):
            status, stderr = cli(*args)
            assert status == 2 and f"{run / '.lock'}: cannot create the run lock (Read-only file system)" in one_line(
                stderr
            )
        assert load(run, 1).epoch == 1
        assert cli("report", str(run), "-o", str(tmp_path / "elsewhere" / "r.html"))[0] == 0
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert cli("train", str(config), "--out", str(out), "--device", "cpu", "--resume")[0] == 0
    assert same_final(reference, run)


def test_a_report_whose_folder_is_not_writable(reference, tmp_path, monkeypatch):
    """Expected: exit 2 naming the report file; an earlier report there is left as it was."""
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "r.html").write_text("earlier report")
    with read_only(monkeypatch, folder):
        status, stderr = cli("report", str(reference), "-o", str(folder / "r.html"))
    assert status == 2 and f"{folder / 'r.html'}: cannot write (Read-only file system)" in one_line(stderr)
    assert (folder / "r.html").read_text() == "earlier report"


# The CLI, with training held after its first epoch until the test kills it.
HOLD_AFTER_EPOCH_1 = r"""
import sys, time
from toylens.train.loop import Trainer
end_epoch = Trainer.end_epoch

def held(self, *args):
    row = end_epoch(self, *args)
    while self.state.epoch >= 1:
        time.sleep(0.1)
    return row

Trainer.end_epoch = held
from toylens.cli import main
sys.argv = ["toylens", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_two_processes_training_into_one_run_directory(config, reference, tmp_path):
    """Expected: while one trains, a second `toylens train --resume` on the same run exits 2
    naming the first one's pid and changes nothing; when the first is killed, its lock is stale
    and the next --resume takes it over and finishes identical to an uninterrupted run."""
    out, run = tmp_path / "runs", tmp_path / "runs" / "faulty"
    args = ["train", str(config), "--out", str(out), "--device", "cpu", "--no-progress", "--resume"]
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD_AFTER_EPOCH_1, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while "epoch-0001" not in (RunDir(run).manifest()["checkpoints"] if RunDir(run).exists() else {}):
        assert first.poll() is None and time.monotonic() < deadline, "the first process did not reach epoch 1"
        time.sleep(0.02)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    second = subprocess.run([sys.executable, "-m", "toylens.cli", *args], capture_output=True, text=True)
    assert first.poll() is None, "the first process should still be training"
    line = one_line(second.stderr)
    assert second.returncode == 2 and f"{run}: in use by pid {first.pid}" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == first.pid  # the stale lock
    third = subprocess.run([sys.executable, "-m", "toylens.cli", *args], capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert f"took over the lock of pid {first.pid}" in third.stderr
    assert same_final(reference, run)
