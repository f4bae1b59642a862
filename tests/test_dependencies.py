"""Every package that FeXT's source imports is declared in pyproject.toml, so a fresh install has it."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

SRC = Path(__file__).resolve().parents[1] / "src" / "fext"


def _imported_top_level_modules() -> set[str]:
    """Top-level names of every absolute import in src/fext, function-level imports included."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"fext", "__future__"}


def _declared_distributions() -> set[str]:
    """The distributions fext requires without extras, normalised as pip does."""
    required = [Requirement(r) for r in metadata.requires("fext") or []]
    return {_normal(r.name) for r in required if r.marker is None or "extra" not in str(r.marker)}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_imported_package_is_declared():
    provided_by = metadata.packages_distributions()
    declared = _declared_distributions()
    undeclared = {}
    for module in sorted(_imported_top_level_modules()):
        distributions = {_normal(d) for d in provided_by.get(module, [])}
        assert distributions, f"{module} is imported by src/fext but no installed distribution provides it"
        if not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported by src/fext but not in pyproject.toml's dependencies: {undeclared}"


def test_the_scan_sees_function_level_imports():
    assert {"torch", "numpy", "PIL", "scipy"} <= _imported_top_level_modules()
