"""chalicelib's import graph (every import, also those inside functions) has no cycle; only deps composes."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.factories import ROOT

PACKAGE = ROOT / "chalicelib"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The chalicelib modules an import statement runs: the named module and every package above it."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from chalicelib import deps` imports a module; `from chalicelib.jobs.model import Job` a name
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
    else:
        return set()
    targets = set()
    for name in names:
        parts = name.split(".")
        targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(modules)
    return targets


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = tree.body if module_level_only else ast.walk(tree)
        graph[name] = {t for node in nodes for t in _targets(node, modules)} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts, or None (depth-first, with the path on a stack)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_chalicelib_has_no_import_cycle_not_even_through_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_only_deps_composes_no_other_module_imports_it_at_module_level():
    importers = sorted(
        name for name, targets in import_graph(module_level_only=True).items() if "chalicelib.deps" in targets
    )
    assert importers == []


def test_the_walk_sees_a_cycle_made_of_imports_inside_functions():
    graph = {
        "chalicelib.deps": {"chalicelib.notify.invoke"},
        "chalicelib.notify.invoke": {"chalicelib.notify.commands"},
    }
    assert find_cycle(graph) is None
    graph["chalicelib.notify.commands"] = {"chalicelib.deps"}
    assert find_cycle(graph) == [
        "chalicelib.deps",
        "chalicelib.notify.invoke",
        "chalicelib.notify.commands",
        "chalicelib.deps",
    ]


def test_the_walk_follows_both_forms_of_import_and_the_packages_they_run():
    modules = _modules()
    lazy = ast.parse("def f():\n    from chalicelib import deps\n    from chalicelib.jobs.model import Job\n")
    found = set().union(*(_targets(node, modules) for node in ast.walk(lazy)))
    assert found == {"chalicelib", "chalicelib.deps", "chalicelib.jobs", "chalicelib.jobs.model"}
    assert "chalicelib.deps" in import_graph()["chalicelib.notify.slack"]  # a lazy import is an edge too
