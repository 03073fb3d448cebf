"""Checkpoint integrity: truncated, altered, pickled and missing files are refused by name, however
the checkpoint is named (run directory, checkpoint spec, or the file's own path); a file outside
any run loads with a warning that it was not verified; nothing in the package can load a pickle."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from toylens import load, train
from toylens.errors import ToylensError
from toylens.rundir import UnverifiedFile

CKPT = "checkpoints/epoch-0001.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train(tiny_config(train={"epochs": 1}), tmp_path_factory.mktemp("runs"), progress=False).run_dir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(trained, tmp_path / "run"))


def refused(run: Path, checkpoint="final") -> str:
    with pytest.raises(ToylensError) as e:
        load(run, checkpoint)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_truncated(run_copy):
    path = run_copy / CKPT
    path.write_bytes(path.read_bytes()[:-100])
    msg = refused(run_copy, 1)
    assert CKPT in msg and "truncated" in msg


def test_bit_flipped(run_copy):
    path = run_copy / CKPT  # the final checkpoint of this one-epoch run: what load(run) reads
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10
    path.write_bytes(bytes(data))
    msg = refused(run_copy)
    assert CKPT in msg and "SHA-256 does not match" in msg


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_is_never_loaded(run_copy, how):
    path = run_copy / CKPT
    if how == "pickle":
        path.write_bytes(pickle.dumps({"embed.W_E": [1.0, 2.0]}))
    else:
        torch.save({"embed.W_E": torch.zeros(2)}, path)
    msg = refused(run_copy)
    assert CKPT in msg and "never loads pickles" in msg
    standalone = run_copy.parent / "stray.safetensors"  # outside the run: nothing to verify it against
    path.rename(standalone)
    with pytest.warns(UnverifiedFile), pytest.raises(ToylensError, match="never loads pickles"):
        load(standalone)


def flip_a_weight(path: Path) -> None:
    """One bit of the last weight in the file flipped: a model that loads, subtly wrong."""
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rel", [CKPT, "final.safetensors"])
def test_a_tampered_checkpoint_is_refused_whichever_way_it_is_named(run_copy, rel):
    flip_a_weight(run_copy / rel)
    named = [lambda: load(run_copy / rel)]
    if rel == CKPT:  # the run's final checkpoint: by the run, by its spec, by its name
        named += [lambda: load(run_copy), lambda: load(run_copy, "final"), lambda: load(run_copy, "epoch-0001")]
    for how in named:
        with pytest.raises(ToylensError, match="SHA-256 does not match the run manifest") as e:
            how()
        assert rel in str(e.value) and "\n" not in str(e.value)


def test_a_file_inside_a_run_but_not_in_its_manifest_is_refused(run_copy):
    stray = run_copy / "checkpoints" / "copy.safetensors"
    stray.write_bytes((run_copy / CKPT).read_bytes())
    with pytest.raises(ToylensError, match="not listed in the run manifest"):
        load(stray)


def test_a_file_outside_any_run_loads_with_one_warning(run_copy, tmp_path):
    outside = tmp_path / "elsewhere" / "weights.safetensors"
    outside.parent.mkdir()
    outside.write_bytes((run_copy / CKPT).read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the once is toylens's own, not the warnings filter's
        first = load(outside)
        load(outside)
    assert [str(w.message) for w in caught if w.category is UnverifiedFile] == [
        f"{outside}: not inside a toylens run directory, so its contents could not be verified against a manifest"
    ]
    tokens = torch.randint(0, 10, (2, 8))
    torch.testing.assert_close(first.model(tokens), load(run_copy, 1).model(tokens))


def test_missing_and_unknown(run_copy):
    (run_copy / CKPT).unlink()
    assert "missing" in refused(run_copy, 1)
    assert "no checkpoint 'epoch-0009'" in refused(run_copy, 9)
    (run_copy / "manifest.json").unlink()
    assert "not a toylens run directory" in refused(run_copy)


def test_standalone_checkpoint_rebuilds_model(trained):
    loaded = load(trained / CKPT)
    tokens = torch.randint(0, 10, (2, 8))
    torch.testing.assert_close(loaded.model(tokens), load(trained, 1).model(tokens))


def test_cli_refuses_with_exit_2(run_copy):
    (run_copy / "final.safetensors").write_bytes(b"\x80\x04garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "toylens.cli", "summary", str(run_copy)], capture_output=True, text=True
    )
    assert proc.returncode == 0  # summary reads summary.json only
    summary = run_copy / "summary.json"
    text = summary.read_text()
    i = text.index("0.")
    summary.write_text(text[:i] + "1" + text[i + 1 :])  # same length, one digit changed
    proc = subprocess.run(
        [sys.executable, "-m", "toylens.cli", "summary", str(run_copy)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "summary.json" in proc.stderr and "SHA-256" in proc.stderr


def test_source_never_unpickles():
    src = Path(__file__).parents[2] / "src" / "toylens"
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|import pickle|weights_only\s*=\s*False")
    offenders = [str(p) for p in src.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_atomic_writes_get_the_mode_an_ordinary_open_would(tmp_path):
    """mkstemp's temp files are 0600; a written report or run file must be readable like any other."""
    import os

    from toylens.storage import atomic_write, current_umask

    target = tmp_path / "report.html"
    atomic_write(target, b"<html></html>")
    assert target.read_bytes() == b"<html></html>"
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
