"""Every shipped config validates and resolves against its task (without training it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toylens.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"induction-1l.yaml", "induction-2l.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem, "a config's name is its file name, so runs land where users look"
