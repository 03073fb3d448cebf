"""How the house reads, checked: no file over 500 lines and no function over 60 in src/, no private
helper imported from another module (a shared helper has a public name and a home), no layer of
old names, and tests/ mirroring the packages of src/toylens/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "toylens"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "data" not in p.relative_to(SRC).parts)


def test_no_file_over_500_lines_and_no_function_over_60():
    long_files = [f"{p.relative_to(SRC)}: {n}" for p in sources() if (n := p.read_text().count("\n")) > MAX_FILE_LINES]
    long_functions = [
        f"{p.relative_to(SRC)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
        for p in sources()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long_files == [] and long_functions == []


def test_no_private_name_is_imported_from_another_module():
    found = []
    for p in sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toylens"):
                found += [f"{p.relative_to(SRC)}: {a.name}" for a in node.names if re.match(r"_[a-z]", a.name)]
    assert found == []


def test_no_layer_of_old_names():
    pattern = re.compile(r"FutureWarning|DeprecationWarning|_moved")
    hits = [
        f"{p.relative_to(SRC)}:{i}"
        for p in sources()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_tests_mirror_the_packages():
    packages = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert {"rundir", "llc", "development", "config", "analysis"} <= set(packages)
    missing = [name for name in packages if not (ROOT / "tests" / name).is_dir()]
    assert missing == []
