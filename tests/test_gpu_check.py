"""bench/gpu.py, the GPU check, runs end to end with tiny sizes on the CPU and writes its report,
so the one command a device session runs cannot rot between sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["tests", "ensemble", "train", "patching", "llc", "fulltext", "speedpaths", "refined"]


@pytest.mark.slow
def test_smoke_check_on_the_cpu_writes_every_part(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TOYLENS_TEST_DEVICE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    cmd = [sys.executable, "-m", "bench.gpu", "--device", "cpu", "--smoke", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "gpu.json").read_text())
    parts = {p["name"]: p for p in report["parts"]}
    assert list(parts) == PARTS
    failed = {n: p["tail"][-800:] for n, p in parts.items() if p["status"] != "ok"}
    assert not failed and proc.returncode == 0, failed or proc.stderr[-2000:]
    assert report["smoke"] and report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    assert parts["tests"]["figures"]["passed"] > 0 and "failed" not in parts["tests"]["figures"]
    assert parts["ensemble"]["figures"]["ratio"] > 0
    assert parts["train"]["figures"]["toylens_tok_s"] > 0
    assert parts["patching"]["figures"]["head_out_by_pos_toylens_s"] > 0
    assert parts["llc"]["figures"]["checkpoints"] == 3 and parts["llc"]["figures"]["toylens_s"] > 0
    assert parts["fulltext"]["figures"]["tokens_per_s"] > 0 and parts["fulltext"]["figures"]["steps"] == 2
    speed = parts["speedpaths"]["figures"]
    assert speed["plain_tok_s"] > 0 and all(speed[f"{p}_speedup"] > 0 for p in ("fused", "bf16"))
    assert speed["bf16_loss_rel"] <= 0.1 and speed["fused_first_rel"] <= 1e-3
    refined = parts["refined"]["figures"]  # 2 epochs: 3 checkpoints x 8 heads of induction-2l
    assert (refined["checkpoints"], refined["restrictions"]) == (3, 8) and refined["toylens_s"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert all(f"| {name} | ok |" in table for name in PARTS)
