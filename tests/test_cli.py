"""The command line: every --help explains itself; train runs end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import TINY


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toylens.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("cmd", [[], ["train"], ["summary"], ["config"], ["config", "fields"], ["config", "show"], ["sweep"]])
def test_help(cmd):
    proc = cli(*cmd, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout and len(proc.stdout.splitlines()) > 4


def test_train_help_documents_options():
    out = cli("train", "--help").stdout
    for option in ("--set", "--out", "--resume", "--overwrite", "--device"):
        assert option in out


def test_train_then_summary(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    proc = cli("train", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress", "--set", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert f"run: {tmp_path / 'runs' / 'tiny'}" in proc.stdout and "test/acc=" in proc.stdout
    assert "epoch 1:" in proc.stderr
    summary = cli("summary", str(tmp_path / "runs" / "tiny"))
    assert summary.returncode == 0 and "test/list_acc=" in summary.stdout


def test_config_show_resolves(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    shown = yaml.safe_load(cli("config", "show", str(cfg)).stdout)
    assert shown["model"]["d_vocab"] == 11 and shown["train"]["weight_decay"] == 0.0
    assert "train.l1.hooks" in cli("config", "fields").stdout


def test_bad_device(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    proc = cli("train", str(cfg), "--out", str(tmp_path), "--device", "tpu:9")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --device")


def test_shipped_configs_validate():
    from pathlib import Path

    from toylens.config import load_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        load_config(path)
