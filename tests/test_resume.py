"""Killed with SIGKILL at any moment and rerun, training, `analyze` and `llc` end with the files
of an uninterrupted run: weights bit-identical, metrics equal apart from wall-clock fields,
analysis and LLC results identical.

Every process here runs at its default thread count. Kill moments are drawn from a seeded
generator across each job's own running time; the write-path kills (inside a checkpoint write,
between fsync and rename, between a write and the manifest update) run the CLI under a wrapper
that kills the process at that point of `toylens.storage.atomic_write`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from toylens.run import RunDir

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "killme", "seed": 0,
    "task": {"name": "sort", "list_len": 6, "n_values": 20, "n_train": 2000, "n_test": 200},
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.003, "warmup_steps": 2, "weight_decay": 0.1,
              "log_checkpoints": 6, "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.001}},
}
WALL_CLOCK = {"wall_s"}

# Runs the CLI, killing the process at one point of a write to a file whose path ends in TARGET:
#   mid-write        the temp file holds half the bytes (killed at its fsync)
#   before-rename    the temp file is complete and synced, not yet renamed over the target
#   before-manifest  the file is in place, the manifest does not list it yet
KILLER = r"""
import os, signal, sys
mode, target = sys.argv[1], sys.argv[2]
real_replace, real_fsync = os.replace, os.fsync

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def replace(src, dst, *args, **kwargs):
    if mode == "before-rename" and str(dst).endswith(target):
        die()
    real_replace(src, dst, *args, **kwargs)
    if mode == "before-manifest" and str(dst).endswith(target):
        die()

def fsync(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if mode == "mid-write" and name.startswith("." + os.path.basename(target) + "."):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        die()
    real_fsync(fd)

os.replace, os.fsync = replace, fsync
from toylens.cli import main
sys.argv = ["toylens", *sys.argv[3:]]
main()
"""


def toylens(*args: str) -> list[str]:
    return [sys.executable, "-m", "toylens.cli", *args, "--no-progress"]


def killer(mode: str, target: str, *args: str) -> list[str]:
    return [sys.executable, "-c", KILLER, mode, target, *args, "--no-progress"]


@pytest.fixture(autouse=True)
def default_threads():
    assert "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() >= 2


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "killme.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run, and how long its process took."""
    out = tmp_path_factory.mktemp("reference")
    start = time.perf_counter()
    subprocess.run(toylens("train", str(config), "--out", str(out), "--device", "cpu"), check=True, capture_output=True)
    return out / "killme", time.perf_counter() - start


# ------------------------------------------------------------------------------- comparison


def _without_clock(value):
    if isinstance(value, dict):
        return {k: _without_clock(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [_without_clock(v) for v in value]
    return value


def _content(run: RunDir, rel: str):
    """What must be equal between two runs: tensors and metadata, or JSON, without clock fields."""
    if rel.endswith(".safetensors"):
        tensors, meta = run.read_tensors(rel)
        return {k: v for k, v in tensors.items()}, _without_clock(meta)
    if rel.endswith(".jsonl"):
        return _without_clock(run.read_jsonl(rel))
    if rel.endswith(".json"):
        return _without_clock(run.read_json(rel))
    return run.read_bytes(rel)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        # bit for bit, so that NaNs (positions without targets) compare equal to themselves
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.contiguous().view(torch.uint8).numpy().tobytes() == b.contiguous().view(torch.uint8).numpy().tobytes())
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def assert_same_files(a: Path, b: Path, under: str = "") -> None:
    """Every file the manifests list (under `under`) is present in both and equal."""
    ra, rb = RunDir(a), RunDir(b)
    fa = sorted(f for f in ra.manifest()["files"] if f.startswith(under))
    fb = sorted(f for f in rb.manifest()["files"] if f.startswith(under))
    assert fa == fb
    assert ra.manifest()["checkpoints"] == rb.manifest()["checkpoints"]
    differ = [rel for rel in fa if not _equal(_content(ra, rel), _content(rb, rel))]
    assert not differ, f"files differ from the uninterrupted run: {differ}"
    assert not list(b.rglob("*.tmp")), "temp files left behind"


# ------------------------------------------------------------------------------ kill and rerun


def _kill_after(cmd: list[str], started: Path, delay: float) -> bool:
    """Run cmd, SIGKILL it `delay` seconds after `started` exists; True if it was killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _random_kills(cmd: list[str], started: Path, span: float, seed: int, kills: int) -> list[float]:
    """Kill cmd at `kills` moments drawn uniformly over its running time `span`, rerunning
    (the same command) between kills; returns the moments that landed before the job ended."""
    rng = random.Random(seed)
    landed: list[float] = []
    for _ in range(4 * kills):
        moment = rng.uniform(0.02, 0.95) * span
        if _kill_after(cmd, started, moment):
            landed.append(round(moment, 2))
        if len(landed) == kills:
            break
    assert len(landed) == kills, f"only {len(landed)} kills landed before the job finished: {landed}"
    return landed


def test_training_killed_at_random_moments_resumes_bit_identical(config, reference, tmp_path):
    ref, _ = reference
    span = RunDir(ref).read_json("summary.json")["wall_s"]  # the training loop's own time
    out = tmp_path / "out"
    cmd = toylens("train", str(config), "--out", str(out), "--device", "cpu", "--resume")
    landed = _random_kills(cmd, out / "killme" / "manifest.json", span, seed=13, kills=5)
    subprocess.run(cmd, check=True, capture_output=True)
    assert_same_files(ref, out / "killme")
    print("kills landed at (s after the run directory appeared):", landed)


@pytest.mark.parametrize("mode,target", [
    ("mid-write", "config.yaml"),                               # while the run is being created
    ("mid-write", "checkpoints/epoch-0002.safetensors"),        # inside a checkpoint write
    ("before-rename", "checkpoints/epoch-0001.state.safetensors"),
    ("before-manifest", "metrics.jsonl"),                       # a new row on disk, not in the manifest
    ("before-manifest", "final.safetensors"),
])
def test_training_killed_inside_a_write_resumes_bit_identical(config, reference, tmp_path, mode, target):
    ref, _ = reference
    out = tmp_path / "out"
    args = ["train", str(config), "--out", str(out), "--device", "cpu"]
    killed = subprocess.run(killer(mode, target, *args), capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    if mode != "before-manifest":
        assert list((out / "killme").rglob("*.tmp")), "the kill should leave a temp file behind"
    subprocess.run(toylens(*args, "--resume"), check=True, capture_output=True)
    assert_same_files(ref, out / "killme")


def _copy_run(ref: Path, dest: Path) -> Path:
    shutil.copytree(ref, dest, ignore=shutil.ignore_patterns("analysis", "llc", ".lock"))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k.split("/")[0] not in ("analysis", "llc")}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


ANALYZE = ["--checkpoint", "all", "--examples", "64"]
LLC = ["--group", "2", "--set", "chains=2", "--set", "draws=30", "--set", "burnin=10", "--set", "batch_size=32"]


def _timed(cmd: list[str], started: Path) -> float:
    """Run cmd to completion; seconds from `started` appearing to its exit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not started.exists() and proc.poll() is None:
        time.sleep(0.01)
    t0 = time.perf_counter()
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    return time.perf_counter() - t0


@pytest.mark.parametrize("job,extra,results", [("analyze", ANALYZE, "analysis/"), ("llc", LLC, "llc/")])
def test_analysis_and_llc_killed_and_rerun_give_identical_results(reference, tmp_path, job, extra, results):
    """The kills land while results are computed and written (the job's lock file marks its start)."""
    ref, _ = reference
    a, b = _copy_run(ref, tmp_path / "a"), _copy_run(ref, tmp_path / "b")
    span = _timed(toylens(job, str(a), *extra), a / ".lock")
    cmd = toylens(job, str(b), *extra)
    _random_kills(cmd, b / ".lock", span, seed=7, kills=3)
    subprocess.run(cmd, check=True, capture_output=True)
    assert_same_files(a, b, under=results)
    assert len([f for f in RunDir(b).manifest()["files"] if f.startswith(results)]) > 10
