"""Killed with SIGKILL at any moment and rerun, training, `analyze`, `llc`, `sweep` and
`reproduce` end with the files of an uninterrupted run: weights bit-identical, metrics equal apart
from wall-clock fields, analysis and LLC results identical.

Every process here runs at its default thread count. Kill moments are drawn from a seeded
generator across each job's work, counted in ticks that do not depend on the machine's load:
every call of an `nn.Module` (a layer's forward pass), of `scaled_dot_product_attention` (the
LLC sampler's stacked forward) and every file write. The write-path kills (inside a checkpoint
write, between fsync and rename, between a write and the manifest update) stop the process at
that point of `toylens.storage.atomic_write`. A sweep's own process does no work of its own
(its workers train), so its kills are timed from its members' progress on disk.
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

from toylens.rundir import RunDir

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "killme",
    "seed": 0,
    "task": {"name": "sort", "list_len": 6, "n_values": 20, "n_train": 2000, "n_test": 200},
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64},
    "train": {
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.003,
        "warmup_steps": 2,
        "weight_decay": 0.1,
        "log_checkpoints": 6,
        "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.001},
    },
}
WALL_CLOCK = {"wall_s"}

# Runs the CLI and kills it (SIGKILL) at a point of its work. MODE ARG:
#   ticks PATH       count the job's ticks (module calls, attention calls, file writes) into PATH
#   tick N           kill at the N-th tick
#   mid-write F      kill inside the write of a file ending in F: its temp file holds half the bytes
#   before-rename F  the temp file of F is complete and synced, not yet renamed over F
#   before-manifest F  F is in place, the run manifest does not list it yet
KILLER = r"""
import atexit, os, signal, sys
import torch
mode, arg = sys.argv[1], sys.argv[2]
real_replace, real_fsync = os.replace, os.fsync
real_call, real_sdpa = torch.nn.Module.__call__, torch.nn.functional.scaled_dot_product_attention
ticks = 0

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def tick():
    global ticks
    ticks += 1
    if mode == "tick" and ticks == int(arg):
        die()

def replace(src, dst, *args, **kwargs):
    tick()
    if mode == "before-rename" and str(dst).endswith(arg):
        die()
    real_replace(src, dst, *args, **kwargs)
    if mode == "before-manifest" and str(dst).endswith(arg):
        die()

def fsync(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if mode == "mid-write" and name.startswith("." + os.path.basename(arg) + "."):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        die()
    real_fsync(fd)

def call(self, *args, **kwargs):
    tick()
    return real_call(self, *args, **kwargs)

def sdpa(*args, **kwargs):
    tick()
    return real_sdpa(*args, **kwargs)

os.replace, os.fsync = replace, fsync
torch.nn.Module.__call__, torch.nn.functional.scaled_dot_product_attention = call, sdpa
if mode == "ticks":
    atexit.register(lambda: open(arg, "w").write(str(ticks)))
from toylens.cli import main
sys.argv = ["toylens", *sys.argv[3:]]
main()
"""


def toylens(*args: str) -> list[str]:
    return [sys.executable, "-m", "toylens.cli", *args, "--no-progress"]


def killer(mode: str, arg: str, *args: str) -> list[str]:
    return [sys.executable, "-c", KILLER, mode, arg, *args, "--no-progress"]


def count_ticks(args: list[str], tmp_path: Path) -> int:
    """Run the job to completion under the tick counter; its number of ticks."""
    counter = tmp_path / "ticks.txt"
    proc = subprocess.run(killer("ticks", str(counter), *args), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(counter.read_text())


def random_kills(args: list[str], total: int, seed: int, kills: int) -> list[int]:
    """Kill the job at `kills` moments drawn uniformly over its `total` ticks (2-95%), rerunning
    the same command after each: the i-th run is killed after the ticks between the (i-1)-th and
    i-th moments. A rerun redoes some work (a resumed epoch), so each kill lands no later in the
    job than its moment, and before the job ends. Returns the moments."""
    rng = random.Random(seed)
    moments = sorted(rng.randint(int(0.02 * total), int(0.95 * total)) for _ in range(kills))
    for i, moment in enumerate(moments):
        proc = subprocess.run(
            killer("tick", str(max(1, moment - (moments[i - 1] if i else 0))), *args), capture_output=True, text=True
        )
        assert proc.returncode == -signal.SIGKILL, (
            f"kill {i + 1} at tick {moment} of {total} did not land: {proc.stderr[-2000:]}"
        )
    return moments


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
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.numpy().tobytes() == b.numpy().tobytes()
        )
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


def test_training_killed_at_random_moments_resumes_bit_identical(config, reference, tmp_path):
    """Five kills at random moments, then one inside the write of the next epoch checkpoint."""
    ref, _ = reference
    args = ["train", str(config), "--out", str(tmp_path / "out"), "--device", "cpu", "--resume"]
    total = count_ticks(["train", str(config), "--out", str(tmp_path / "count"), "--device", "cpu"], tmp_path)
    random_kills(args, total, seed=13, kills=5)
    run = RunDir(tmp_path / "out" / "killme")
    done = max((c.epoch for c in run.checkpoints() if c.resumable), default=-1) if run.exists() else -1
    assert done < CONFIG["train"]["epochs"], "the random kills left no epoch checkpoint to kill inside"
    target = f"checkpoints/epoch-{done + 1:04d}.safetensors"
    assert subprocess.run(killer("mid-write", target, *args), capture_output=True).returncode == -signal.SIGKILL
    subprocess.run(toylens(*args), check=True, capture_output=True)
    assert_same_files(ref, tmp_path / "out" / "killme")


@pytest.mark.parametrize(
    "mode,target",
    [
        ("mid-write", "config.yaml"),  # while the run is being created
        ("mid-write", "checkpoints/epoch-0002.safetensors"),  # inside a checkpoint write
        ("before-rename", "checkpoints/epoch-0001.state.safetensors"),
        ("before-manifest", "metrics.jsonl"),  # a new row on disk, not in the manifest
        ("before-manifest", "final.safetensors"),
    ],
)
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


@pytest.mark.parametrize("job,extra,results", [("analyze", ANALYZE, "analysis/"), ("llc", LLC, "llc/")])
def test_analysis_and_llc_killed_and_rerun_give_identical_results(reference, tmp_path, job, extra, results):
    ref, _ = reference
    a, b = _copy_run(ref, tmp_path / "a"), _copy_run(ref, tmp_path / "b")
    total = count_ticks([job, str(a), *extra], tmp_path)
    random_kills([job, str(b), *extra], total, seed=7, kills=3)
    subprocess.run(toylens(job, str(b), *extra), check=True, capture_output=True)
    assert_same_files(a, b, under=results)
    assert len([f for f in RunDir(b).manifest()["files"] if f.startswith(results)]) > 10


def _members(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/manifest.json"))


def _kill_when(cmd: list[str], ready, delay: float) -> None:
    """Run cmd and SIGKILL it `delay` seconds after `ready()` first holds (before it ends)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before its kill"
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, "the sweep ended before its kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _checkpoints(member: Path) -> int:
    return len(RunDir(member).checkpoints()) if RunDir(member).exists() else 0


def test_sweep_killed_and_rerun_gives_identical_members(config, reference, tmp_path):
    """Two members trained one after the other, each as its own worker process; the sweep is
    killed while each member trains (its worker dies with it) and the rerun resumes both."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "sw",
                "base": str(config),
                "method": "grid",
                "parameters": {"train.weight_decay": [0.0, 0.3]},
                "seeds": [0],
            }
        )
    )
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(toylens("sweep", str(spec), "--out", str(a), "--device", "cpu"), check=True, capture_output=True)
    cmd = toylens("sweep", str(spec), "--out", str(b), "--device", "cpu")
    rng = random.Random(5)
    first, second = b / "sw" / "sw-weight_decay0-seed0", b / "sw" / "sw-weight_decay0.3-seed0"
    _kill_when(cmd, lambda: _checkpoints(first) >= 2, rng.uniform(0, 0.3))  # inside member 1's epoch 2
    _kill_when(cmd, lambda: _checkpoints(second) >= 1, rng.uniform(0, 0.3))  # inside member 2's epoch 1
    time.sleep(0.5)  # let the kernel deliver the workers' parent-death signal
    subprocess.run(cmd, check=True, capture_output=True)
    members = [m.name for m in _members(a / "sw")]
    assert members == [m.name for m in _members(b / "sw")] == [first.name, second.name]
    for name in members:
        assert_same_files(a / "sw" / name, b / "sw" / name)


def test_study_killed_and_rerun_gives_identical_results(config, tmp_path):
    """train -> analyze -> llc -> report of one run, killed 4 times; every result file equal."""
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "st",
                "title": "kill test",
                "runs": [str(config)],
                "steps": ["train", "analyze", "llc", "report"],
                "quick": {
                    "analyze": [
                        {"checkpoint": "all", "only": ["head_scores", "attention"]},
                        {"checkpoint": "final", "settings": {"n_examples": 64, "ablate_neurons": False}},
                    ],
                    "llc": {"checkpoint": "all", "chains": 2, "draws": 20, "burnin": 10, "calibrate": False},
                },
            }
        )
    )
    a, b = tmp_path / "a", tmp_path / "b"
    total = count_ticks(["reproduce", str(study), "--quick", "--out", str(a), "--device", "cpu"], tmp_path)
    args = ["reproduce", str(study), "--quick", "--out", str(b), "--device", "cpu"]
    random_kills(args, total, seed=11, kills=4)
    subprocess.run(toylens(*args), check=True, capture_output=True)
    assert_same_files(a / "st-quick" / "killme", b / "st-quick" / "killme")
    assert (b / "st-quick" / "report.html").is_file()
