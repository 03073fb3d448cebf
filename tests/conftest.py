"""Shared fixtures: tiny seeded configs and models (no network, no GPU), a blocked network, the
`toylens` command run in this process, and the device the device-sensitive tests run on.

The device-sensitive tests (those that take the `device` fixture; `pytest -m device` selects
them) run on the CPU unless `TOYLENS_TEST_DEVICE` names another torch device:

    TOYLENS_TEST_DEVICE=cuda python -m pytest -m device     # on a GPU machine (bench/gpu.py does this)
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from toylens.config import RunConfig, validate_config
from toylens.model import Transformer


class Point(nn.Module):
    """A bare float64 parameter vector w: the 'model' of a closed-form LLC potential."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return self.w


TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "sort", "list_len": 4, "n_values": 10, "n_train": 600, "n_test": 100},
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_mlp": 32},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "warmup_steps": 2},
}


def tiny_config(**sections: dict) -> RunConfig:
    """TINY with some sections' fields replaced, e.g. tiny_config(train={"epochs": 3})."""
    raw = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return validate_config(raw)


def sets(**values: Any) -> list[str]:
    """Command-line `--set KEY=VALUE` pairs, e.g. sets(chains=2, draws=4) for a fast LLC."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def tiny_model(
    n_layers: int = 2,
    attn_only: bool = False,
    normalization: str = "LN",
    act_fn: str = "gelu",
    seed: int = 0,
    n_ctx: int = 12,
    device: str | torch.device = "cpu",
) -> Transformer:
    cfg = tiny_config(
        model={
            "n_layers": n_layers,
            "attn_only": attn_only,
            "normalization": normalization,
            "act_fn": act_fn,
            "n_heads": 3,
            "d_model": 12,
            "d_head": 5,
            "d_mlp": 20,
            "n_ctx": n_ctx,
        }
    )
    model = Transformer(cfg.resolved(d_vocab=11, d_vocab_out=10, n_ctx=8).model, seed=seed)
    with torch.no_grad():  # non-trivial biases and LayerNorm gains, so tests see every parameter
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.to(device)  # built on the CPU, so every device starts from the same weights


# Float32 tolerances for results compared across devices or computation orders. On CUDA the
# kernels (cuBLAS with TF32 off, SDPA's memory-efficient attention) sum in other orders than the
# CPU's, so values a few operations deep differ by more than the CPU's float rounding.
TOLERANCE = {"cpu": 1e-5, "cuda": 1e-4}


def patch_pair(seed: int = 0, batch: int = 5, pos: int = 8, same_answers: bool = False):
    """Clean tokens over a 10-token vocabulary, the same with position 2 changed, and correct and
    wrong answers at every position (one row for all examples when `same_answers`), for the
    patching, attribution and path-patching tests."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 10, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1 + torch.randint(0, 8, (batch,), generator=g)) % 10
    rows = 1 if same_answers else batch
    correct = torch.randint(0, 10, (rows, pos), generator=g).expand(batch, pos)
    wrong = torch.randint(0, 10, (rows, pos), generator=g).expand(batch, pos)
    return clean, corrupted, correct, wrong


def tol(device: torch.device) -> float:
    """The absolute (and relative) tolerance of float32 comparisons on `device`."""
    return TOLERANCE.get(device.type, 1e-4)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that takes `device` as `device`, so `pytest -m device` runs just those."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of the device-sensitive tests: TOYLENS_TEST_DEVICE (default cpu). Asking for
    cuda on a machine without it fails the test run at once instead of testing the CPU again."""
    name = os.environ.get("TOYLENS_TEST_DEVICE", "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        pytest.exit(f"TOYLENS_TEST_DEVICE={name!r}: {e}", returncode=4)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.exit(f"TOYLENS_TEST_DEVICE={name!r}, but torch {torch.__version__} sees no CUDA device", returncode=4)
    return dev


@pytest.fixture(scope="session")
def induction_2l(tmp_path_factory) -> Path:
    """configs/induction-2l.yaml trained once per session (about 2 minutes on 2 CPU cores; it has
    a copying induction head), shared by the slow tests that need one."""
    from toylens.train import train

    configs = Path(__file__).resolve().parents[1] / "configs"
    return train(configs / "induction-2l.yaml", tmp_path_factory.mktemp("induction"), progress=False).run_dir


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once, as on a machine with no route out."""

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """A HOME for end-to-end tests, so that the default token cache (~/.cache/toylens) stays out of
    the user's and each bundled sample is tokenized once per session."""
    try:  # matplotlib finds its font cache under the real HOME first (no rebuild in the new one)
        import matplotlib.font_manager  # noqa: F401
    except ImportError:
        pass
    return tmp_path_factory.mktemp("home")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def toylens_main(monkeypatch, capsys) -> Callable[..., CliResult]:
    """`toylens ARGS...` through the console script's entry point (toylens.cli:main) in this
    process: a blocked network applies to it, and no command pays for a Python start. The logging
    setup main() does is undone after each call. A Python exception propagates to the test."""
    from toylens.cli import main

    logger = logging.getLogger("toylens")

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        saved = list(logger.handlers), logger.level, logger.propagate
        monkeypatch.setattr(sys, "argv", ["toylens", *map(str, args)])
        code: int | str | None = 0
        try:
            main()
        except SystemExit as e:
            code = e.code
        finally:
            logger.handlers[:] = saved[0]
            logger.setLevel(saved[1])
            logger.propagate = saved[2]
        out = capsys.readouterr()
        return CliResult(code if isinstance(code, int) else int(code is not None), out.out, out.err)

    return run


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))


def wandb_records(path) -> list:
    """The protobuf records of a W&B offline run file (`run-<id>.wandb`), read independently of
    toylens: a 7-byte header, then LevelDB-style log records (crc32, length, type) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(folder) -> dict:
    """Group, name, config and history rows of every offline W&B run under `folder`, by name."""
    import json

    runs: dict = {}
    for file in sorted(folder.rglob("offline-run-*/run-*.wandb")):
        info: dict = {"history": [], "config": {}}
        for rec in wandb_records(file):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                info.update(group=rec.run.run_group, name=rec.run.display_name, id=rec.run.run_id)
                info["config"] = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
            elif kind == "history":
                info["history"].append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                )
        runs.setdefault(info["name"], []).append(info)
    return runs
