"""The command line: every --help explains itself; train runs end to end; --set and --device
mean the same in every command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import TINY, sets


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toylens.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["train"],
        ["summary"],
        ["config"],
        ["config", "fields"],
        ["config", "show"],
        ["sweep"],
        ["analyze"],
        ["export"],
        ["llc"],
        ["llc", "calibrate"],
        ["reproduce"],
    ],
)
def test_help(cmd):
    proc = cli(*cmd, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout and len(proc.stdout.splitlines()) > 4


def test_python_dash_m_toylens_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "toylens", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "reproduce" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "toylens", "train", "missing.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr


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

    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        load_config(path)


# --------------------------------------------------------------------- one --set, one --device


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from toylens import train

    cfg = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 1}}))
    return cfg, train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run_dir


def one_line_error(result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def test_set_errors_read_the_same_in_every_command(toylens_main, tiny_run, tmp_path):
    cfg, run = tiny_run
    train = ("train", cfg, "--out", tmp_path, "--no-progress")
    for command in [("llc", run), ("llc", "estimate", run), ("llc", "calibrate", run)]:
        assert (
            one_line_error(toylens_main(*command, "--set", "chans=8"))
            == "--set chans: unknown key (did you mean 'chains'?)"
        )
        assert one_line_error(toylens_main(*command, "--set", "llc.chans=8")) == (
            "--set llc.chans: unknown key (did you mean 'chains'?)"
        )
        assert one_line_error(toylens_main(*command, "--set", "chains")) == "--set 'chains': expected KEY=VALUE"
        assert one_line_error(toylens_main(*command, "--set", "chains=0")).startswith("--set: chains: ")
    assert one_line_error(toylens_main(*train, "--set", "train.wieght_decay=0.1")) == (
        "--set train.wieght_decay: unknown key (did you mean 'train.weight_decay'?)"
    )
    assert one_line_error(toylens_main(*train, "--set", "train.lr")) == "--set 'train.lr': expected KEY=VALUE"
    assert one_line_error(toylens_main("config", "show", cfg, "--set", "seed.x=1")) == (
        "--set seed.x: unknown key (did you mean 'seed'?)"
    )
    assert not (tmp_path / "tiny").exists()


def test_llc_keys_bare_or_with_llc_prefix(toylens_main, tiny_run):
    _, run = tiny_run
    fast = (*sets(draws=4, burnin=2, batch_size=8, init_batches=1), "--no-progress")
    bare = toylens_main("llc", run, "--checkpoint", "final", "--set", "chains=2", *fast)
    assert bare.exit_code == 0, bare.stderr
    prefixed = toylens_main("llc", run, "--checkpoint", "final", "--set", "llc.chains=2", *fast)
    assert prefixed.exit_code == 0 and prefixed.stdout == bare.stdout  # the same settings: the stored estimate


def test_help_names_every_llc_setting_and_the_device_default(toylens_main):
    from toylens.llc import LLCSettings

    out = toylens_main("llc", "estimate", "--help").stdout
    assert all(name in out for name in LLCSettings.model_fields), out
    for command in (
        ["train"],
        ["sweep"],
        ["analyze"],
        ["export"],
        ["llc", "estimate"],
        ["llc", "calibrate"],
        ["reproduce"],
    ):
        text = " ".join(toylens_main(*command, "--help").stdout.split())
        assert (
            "--device <str> Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1. [default: auto]"
            in text
        )
