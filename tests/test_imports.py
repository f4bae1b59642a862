"""Imports run one way: the module graph of ``src/fext`` has no cycle, counting imports inside functions.

The graph is read from the source (AST), not from ``sys.modules``, so an import dodged by placing it inside a
function still counts. An import names the module that defines what it takes: ``from fext.encoding import
open_encoding`` points at ``fext.encoding.files`` through the package's lazy ``_EXPORTS`` table, and a
``from package import submodule`` points at the submodule. Imports under ``if TYPE_CHECKING:`` count too (a
cycle of annotations is still a cycle); the implicit import of a parent package does not.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import fext

SOURCE = Path(fext.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is it a package's ``__init__``)."""
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module: at module level, in functions, under ``if TYPE_CHECKING:``."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _exports(package: str) -> dict[str, str]:
    """A package's lazy ``name -> module`` table (empty when it has none)."""
    return getattr(importlib.import_module(package), "_EXPORTS", {})


def import_graph() -> dict[str, dict[str, int]]:
    """``module -> {imported module: line}`` for every module of fext."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, (path, is_package) in modules.items():
        package = module if is_package else module.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = []
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        targets.append(full)
                    elif base in modules and modules[base][1] and alias.name in _exports(base):
                        targets.append(_exports(base)[alias.name])
                    else:
                        targets.append(owner(base))
            for target in targets:
                if target and target.startswith("fext") and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in graph.get(node, {}):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions_and_lazy_exports():
    graph = import_graph()
    assert "fext.encoding.files" in graph["fext.explore.run"]  # `from fext.encoding import open_encoding`, in a function
    assert "fext.commands" in graph["fext.cli"]
    assert "fext.encoding.sharding" in graph["fext.encoding.folder"]
    assert "fext.vectors" in graph["fext.search"] and not graph["fext.vectors"]  # the shared maths is a leaf


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
