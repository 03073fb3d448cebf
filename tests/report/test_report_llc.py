"""The report never shows an unhealthy LLC estimate as a result: the summary names it not healthy
and the LLC section says why, in one sentence per run."""

from __future__ import annotations

from pathlib import Path

from toylens.report.collect import RunResults
from toylens.report.llc import LLCResults, llc_section, llc_summary_rows


def _run(label: str, warnings: list[str]) -> RunResults:
    estimate = {"checkpoint": "epoch-0002", "step": 20, "llc": 3.5, "llc_se": 0.1, "warnings": warnings}
    run = RunResults(label, Path(label), {"task": {"name": "lm"}}, [], None, [])
    run.extras["llc"] = LLCResults([estimate], None, None)
    return run


def test_an_unhealthy_estimate_is_no_headline_number() -> None:
    runs = [_run("healthy", []), _run("sick", ["MALA acceptance 0.02 is low: step size ε=0.001 is too large"])]
    llc_row, se_row = llc_summary_rows(runs)
    assert llc_row[1:] == [3.5, "not healthy (see LLC section)"]
    assert se_row[1:] == [0.1, "not healthy (see LLC section)"]
    section = llc_section(runs)
    assert section is not None
    assert "sick: no healthy LLC estimate" in section.note and "acceptance 0.02" in section.note
    assert "healthy:" not in section.note
