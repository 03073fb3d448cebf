"""Small trained runs for the report tests (shared by test_report.py and test_report_browser.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from conftest import TINY

from toylens.config import validate_config
from toylens.train import train

# The study-2 sorting shapes (10 values from 0..49, 1 layer, 2 heads, d_model 64, MLP 256, 12
# epochs) on very few lists: what the report stores scales with these, not with the data size.
SORT_STUDY: dict[str, Any] = {
    "task": {"name": "sort", "list_len": 10, "n_values": 50, "n_train": 256, "n_test": 64},
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 64, "d_head": 32, "d_mlp": 256},
    "train": {"epochs": 12, "batch_size": 256, "lr": 0.002, "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 1e-4}},
}


def make_run(out: Path, name: str, base: dict[str, Any] = TINY, **sections: dict[str, Any]) -> Path:
    """Train a run named `name` from `base` with some sections' fields replaced; returns its directory."""
    raw = copy.deepcopy(base)
    raw["name"] = name
    for key, value in sections.items():
        if key == "task" and value.get("name", raw["task"]["name"]) != raw["task"]["name"]:
            raw["task"] = {}  # another task: its own fields, not the base task's
        raw.setdefault(key, {}).update(value)
    return train(validate_config(raw), out, progress=False).run_dir
