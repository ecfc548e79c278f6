"""The router's structure, read from its source: policies are reached only through RoutingPolicy,
and the package docstring lists every module. (Import cycles and layering: tests/unit/test_layers.py.)"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import services.router.policies as policies_package
from services.core.settings import REPO_ROOT
from services.router.policies import POLICIES, RoutingPolicy

ROUTER = REPO_ROOT / "services" / "router"
POLICY_DIR = ROUTER / "policies"
KINDS = frozenset(POLICIES)
POLICY_CLASSES = frozenset(
    name for name, obj in vars(policies_package).items()
    if inspect.isclass(obj) and issubclass(obj, RoutingPolicy) and obj is not RoutingPolicy
) | {"BanditPolicy"}


def router_modules(include_policies: bool = False) -> list[Path]:
    return sorted(p for p in ROUTER.rglob("*.py") if include_policies or POLICY_DIR not in p.parents)


def _names(node: ast.AST) -> set[str]:
    """Class names an isinstance() second argument mentions (a name, a dotted name, or a tuple of them)."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names(e) for e in node.elts)) if node.elts else set()
    return set()


def _kind_constants(node: ast.AST) -> set[str]:
    """Policy kind strings in a constant, or in a literal collection of constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in KINDS:
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_kind_constants(e) for e in node.elts)) if node.elts else set()
    return set()


def policy_branching(source: str) -> list[str]:
    """Where code branches on a policy's class or kind string."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
            named = _names(node.args[1]) & POLICY_CLASSES
            if named:
                problems.append(f"line {node.lineno}: {node.func.id}(..., {sorted(named)})")
        elif isinstance(node, ast.Compare):
            kinds = set().union(*(_kind_constants(n) for n in (node.left, *node.comparators)))
            if kinds:
                problems.append(f"line {node.lineno}: compares with policy kind {sorted(kinds)}")
        elif isinstance(node, (ast.Set, ast.List, ast.Tuple)) and _kind_constants(node):
            problems.append(f"line {node.lineno}: a collection of policy kinds {sorted(_kind_constants(node))}")
        elif isinstance(node, ast.MatchValue) and _kind_constants(node.value):
            problems.append(f"line {node.lineno}: matches policy kind {sorted(_kind_constants(node.value))}")
    return problems


def test_the_check_sees_what_it_forbids() -> None:
    bad = '''
if table.kind == "canary": pass
if kind in ("ab", "thompson"): pass
LEARNING = {"ucb1"}
if isinstance(policy, BanditPolicy) or isinstance(p, (ABTestPolicy, int)): pass
match kind:
    case "shadow": pass
'''
    assert {problem.split(":")[0] for problem in policy_branching(bad)} == {f"line {n}" for n in (2, 3, 4, 5, 7)}
    assert policy_branching('if policy.takes_feedback and kind != old.kind: log.info("shadow ok")') == []


@pytest.mark.parametrize("path", router_modules(), ids=lambda p: str(p.relative_to(ROUTER)))
def test_no_policy_kind_or_class_branching_outside_policies(path: Path) -> None:
    assert policy_branching(path.read_text()) == [], f"{path}: use the RoutingPolicy interface instead"


def test_the_package_docstring_lists_every_module() -> None:
    doc = ast.get_docstring(ast.parse((ROUTER / "__init__.py").read_text())) or ""
    listed = {line.split()[0] for line in doc.splitlines() if line.startswith("    ") and line.strip()}
    modules = {f"{p.stem}.py" for p in ROUTER.glob("*.py") if p.stem != "__init__"} | {"policies/"}
    assert sorted(modules - listed) == [], "services/router/__init__.py should list every module, one line each"
