"""toylens as a user gets it from `pip install`: a built wheel, not this checkout.

The wheel must carry every file the package reads at run time (the report's assets, the bundled
data and tokenizers, the shipped configs and studies), and the README's commands must run from a
folder that is not a checkout: `configs/...` paths fall back to the configs shipped in the package
(`toylens.config.shipped`), and study names are found there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "toylens"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a fresh copy of the project files (a checkout's build/ folder would
    lend the wheel files the package data no longer names)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    shutil.copytree(PACKAGE, source / "src" / "toylens", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # No build isolation: setuptools comes with torch in the test environment, and the build
    # needs no network.
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("toylens-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, str]:
    """The wheel installed into a folder of its own; the environment that imports it from there."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    home = tmp_path_factory.mktemp("home")
    return dict(os.environ, PYTHONPATH=str(target), HOME=str(home), TQDM_DISABLE="1")


def test_wheel_holds_every_package_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    missing = [
        str(p.relative_to(PACKAGE.parent)) for p in files if p.relative_to(PACKAGE.parent).as_posix() not in names
    ]
    assert not missing, f"not in the wheel: {missing[:10]}"
    assert any(n.startswith("toylens/presets/studies/") for n in names)


@pytest.mark.slow
def test_installed_wheel_runs_the_readme_commands_outside_a_checkout(installed, tmp_path):
    def toylens(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "toylens", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=600)

    where = subprocess.run(
        [sys.executable, "-c", "import toylens; print(toylens.__file__)"],
        cwd=tmp_path,
        env=installed,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(installed["PYTHONPATH"]), where.stdout  # the wheel, not this checkout

    listed = toylens("config", "list")
    assert listed.returncode == 0, listed.stderr
    shipped = {
        f"configs/{p.relative_to(PACKAGE / 'presets').as_posix()}" for p in (PACKAGE / "presets").rglob("*.yaml")
    }
    assert set(listed.stdout.split()) == shipped and "configs/studies/induction-heads.yaml" in shipped

    tiny = ["--set", "task.n_train=256", "--set", "task.n_test=64", "--set", "train.epochs=1"]
    train = toylens("train", "configs/sort-no-decay.yaml", "--out", "runs", "--no-progress", *tiny)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "using the one shipped with toylens" in train.stderr
    assert (tmp_path / "runs" / "sort-no-decay" / "summary.json").is_file()

    report = toylens("report", "runs/sort-no-decay", "--out", "report.html", "--no-png")
    assert report.returncode == 0, report.stderr[-3000:]
    css = (PACKAGE / "report" / "assets" / "report.css").read_text().splitlines()[0]
    assert css in (tmp_path / "report.html").read_text()  # the assets, inlined from the installed package

    study = toylens("reproduce", "no-such-study")
    assert study.returncode == 2
    assert "sorting-weight-decay" in study.stderr and "induction-heads" in study.stderr  # found in the package

    missing = toylens("train", "configs/no-such.yaml")
    assert missing.returncode == 2 and "configs/no-such.yaml: config file not found" in missing.stderr
