"""Typed results: a saved result loads back as its own class whatever the program imported first."""

from __future__ import annotations

import subprocess
import sys

from conftest import tiny_config

import toylens
from toylens.train import train

LOAD_ALONE = """
import sys
from toylens.rundir.results import load_result
assert "toylens.analysis" not in sys.modules, "the test needs a process that has not imported the analysis"
result = load_result(sys.argv[1], sys.argv[2])
print(type(result).__module__, type(result).__name__)
"""


def test_a_result_loads_in_a_process_that_never_imported_its_module(tmp_path):
    run = train(tiny_config(train={"epochs": 1}), tmp_path, progress=False).run_dir
    toylens.analyze(run, only=["weight_norms"], progress=False)
    toylens.development(run)
    for rel, expected in [
        ("analysis/epoch-0001/weight_norms", "toylens.analysis.regularisation WeightNorms"),
        ("development/stages", "toylens.development.driver Stages"),
    ]:
        proc = subprocess.run([sys.executable, "-c", LOAD_ALONE, str(run), rel], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected
