"""The package layers run one way and no module imports itself back through a cycle.

    core <- protocols <- model_server, kafka <- apps, router <- supervisor, trainer <- stack <- loadtests

A package may import its own modules and those of lower layers, never a sibling of its own layer
or anything above it. Read from the source with `ast` (every import, including ones inside
functions), so a lazy import cannot hide an upward arrow or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANK = {
    "services.core": 0,
    "services.protocols": 1,
    "services.model_server": 2,
    "services.kafka": 2,
    "services.apps": 3,
    "services.router": 3,
    "services.supervisor": 4,
    "services.trainer": 4,
    "services.stack": 5,
    "loadtests": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("services", "loadtests", "tests"):
        for path in (ROOT / top).rglob("*.py"):
            if "_pb2" not in path.name:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules `name` imports (resolved to the longest known module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in names:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            # A module's own ancestor packages are always imported before it (Python's import system), so
            # `from services.x import sibling` inside services.x is an edge to the sibling only.
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items() if not name.startswith("tests")}


def _package(name: str) -> str | None:
    return next((p for p in sorted(RANK, key=len, reverse=True) if name == p or name.startswith(p + ".")), None)


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in MODULES if m.startswith("services.") and _package(m) is None] == []


def test_no_import_runs_up_or_sideways() -> None:
    wrong = []
    for name, targets in GRAPH.items():
        mine = _package(name)
        for target in targets:
            theirs = _package(target)
            if mine and theirs and theirs != mine and RANK[theirs] >= RANK[mine]:
                wrong.append(f"{name} -> {target} ({mine} may not import {theirs})")
    assert wrong == []


def test_no_import_cycle() -> None:
    # Tarjan's strongly connected components; any component with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("tool", ["services.stack", "loadtests", "tests"])
def test_services_never_import_development_tools(tool: str) -> None:
    offenders = [f"{name} -> {t}" for name, targets in GRAPH.items()
                 if not name.startswith(("services.stack", "loadtests")) for t in targets if t.startswith(tool)]
    assert offenders == []
