"""Every ``from featcircuits… import name`` in the scripts outside the package (examples,
benchmarks, tools, tests/support) names something that exists: a moved function (e.g.
``atomic_path`` from ``featcircuits.files`` to ``featcircuits.writes``) breaks a script no
test runs, such as the docs' screenshot maker, only when someone runs it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for folder in ("examples", "benchmarks", "tools", "tests/support")
                 for p in (ROOT / folder).rglob("*.py"))


def _featcircuits_imports(path: Path) -> list[tuple[str, str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(node.module, alias.name, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
            and node.module.split(".")[0] == "featcircuits"
            for alias in node.names if alias.name != "*"]


def test_scripts_were_found():
    assert any(p.parent.name == "examples" for p in SCRIPTS)
    assert any(p.parent.name == "benchmarks" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_imports_exist(path):
    missing = []
    for module_name, name, line in _featcircuits_imports(path):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"line {line}: from {module_name} import {name}")
    assert not missing, f"{path.relative_to(ROOT)}: " + "; ".join(missing)
