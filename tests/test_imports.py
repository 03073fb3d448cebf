"""The package's import graph: no cycle among toylens modules, and `import toylens` stays light.

The graph is read from the source with `ast`, not by importing: an edge M -> N for every
`import N` / `from N import x` at module level, including those under `if TYPE_CHECKING:` (a
cycle of type-only imports is still two modules that cannot be read one without the other), plus
the packages above N that the import runs first (`import a.b.c` runs a/__init__, then
a/b/__init__). A cycle there is an import that works or fails depending on which module a program
happens to import first. Imports inside functions are left out: they run later, when every module
is complete.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path, package: str) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements at module level: top level, and inside module-level if (TYPE_CHECKING
    included), try and with."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            found += _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            found += _module_level(
                node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
            )
        elif isinstance(node, ast.With):
            found += _module_level(node.body)
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that importing `name` (at `path`) imports at module level."""
    is_package = path.name == "__init__.py"
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    targets: set[str] = set()  # modules whose import runs now, with the packages above them
    complete: set[str] = set()  # modules whose names are read now, so must have finished running
    for node in _module_level(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
            continue
        base = node.module or ""
        if node.level:  # relative: from . import x / from .a import b
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        targets.add(base)
        for alias in node.names:
            if f"{base}.{alias.name}" in known:
                targets.add(f"{base}.{alias.name}")
            else:  # a name defined in `base`: even a package above this module must be complete
                complete.add(base)
    edges = {m for m in complete if m in known and m != name}
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # a.b.c runs a, a.b, a.b.c (those not already running)
            prefix = ".".join(parts[:i])
            if prefix in known and prefix not in ancestors and prefix != name:
                edges.add(prefix)
    return edges


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    mods = modules(root, package)
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle_among_toylens_modules():
    graph = import_graph(SRC, "toylens")
    assert len(graph) > 50 and "toylens.config" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_a_cycle(tmp_path):
    """The checker itself: a cycle through a package's __init__, one of type-only imports, and one
    through a name read from a package above (`from pkg import __version__` while pkg/__init__ is
    still importing)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from pkg.sub.names import x\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.model import Model\n")
    (pkg / "sub" / "names.py").write_text("x = 1\n")
    (pkg / "sub" / "model.py").write_text("from pkg import config\n\ndef f():\n    import pkg.late\n")
    (pkg / "late.py").write_text("import pkg.sub.model\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.config"] == {"pkg.sub", "pkg.sub.names"}  # the package __init__ runs first
    assert graph["pkg.sub.names"] == set() and graph["pkg.sub.model"] == {"pkg.config"}
    assert find_cycle(graph) == ["pkg.config", "pkg.sub", "pkg.sub.model", "pkg.config"]
    (pkg / "sub" / "__init__.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
    (pkg / "sub" / "names.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.config\nx = 1\n"
    )
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.config", "pkg.sub.names", "pkg.config"]
    (pkg / "sub" / "names.py").write_text("x = 1\n")
    (pkg / "__init__.py").write_text("from pkg.late import f\n__version__ = '1'\n")
    (pkg / "sub" / "model.py").write_text("from pkg import __version__\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg", "pkg.late", "pkg.sub.model", "pkg"]


FRESH_IMPORTS = """
import importlib, json, sys
failed = {}
for module in sys.argv[1:]:
    for name in [n for n in sys.modules if n == "toylens" or n.startswith("toylens.")]:
        del sys.modules[name]  # torch & co. stay loaded: each module is imported first, cheaply
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "toylens":
            failed[module] = repr(e)
    except Exception as e:
        failed[module] = repr(e)
print(json.dumps(failed))
"""


@pytest.mark.slow
def test_every_module_imports_first():
    """Each module imported before any other toylens module: what the graph above cannot see (a
    package that exports names lazily, or a name read from a half-imported module)."""
    import json

    names = sorted(modules(SRC, "toylens"))
    proc = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, *names], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {}


def test_import_toylens_is_light():
    """`import toylens` loads torch (train and load need it) but none of the optional extras."""
    code = (
        "import sys, toylens; heavy = ('matplotlib', 'ray', 'wandb', 'transformer_lens', 'datasets', "
        "'toylens.analysis'); print([m for m in heavy if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
