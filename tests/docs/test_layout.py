"""The architecture's rules, checked on the source (docs/architecture.md).

One concept per module (no module over ~500 lines), no private name or private module
imported across subpackages, the library never imports the command line, no process-wide
state changed by the library, a small public API with an ``__all__`` in every subpackage.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "featcircuits"
MAX_LINES = 520
#: entry points that may set process-wide state (thread counts) for a whole run
ENTRY_POINTS = {"cli", "__main__.py"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "zoo" not in p.parts)


def _owner(path: Path) -> str:
    """The subpackage a module belongs to (top-level modules are their own owner)."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports(path: Path):
    """``(module, name or None, lineno)`` for every featcircuits import in ``path``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "featcircuits":
            for alias in node.names:
                yield node.module, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "featcircuits":
                    yield alias.name, None, node.lineno


def _target_owner(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (split it)"


def test_no_private_names_across_subpackages():
    bad = []
    for path in _modules():
        owner = _owner(path)
        for module, name, line in _imports(path):
            target = _target_owner(module)
            if target is None or target.removesuffix(".py") == owner:
                continue
            private_module = any(part.startswith("_") and part != "__init__"
                                 for part in module.split(".")[1:])
            if private_module or (name is not None and name.startswith("_")
                                  and name != "__all__"):
                bad.append(f"{path.relative_to(ROOT)}:{line} {module}.{name}")
    assert not bad, "private names imported across subpackages:\n" + "\n".join(bad)


def test_library_never_imports_the_cli():
    bad = [f"{path.relative_to(ROOT)}:{line} {module}"
           for path in _modules() if _owner(path) not in ENTRY_POINTS | {"__main__"}
           for module, name, line in _imports(path)
           if module.startswith("featcircuits.cli")
           or (module == "featcircuits" and name == "cli")]
    assert not bad, "library modules import the command line:\n" + "\n".join(bad)


def _is_environ(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def test_library_changes_no_process_state():
    """No writes to ``os.environ``; thread counts only where a whole run starts (the CLI,
    the training scripts' ``main``), never inside library functions."""
    bad = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if hasattr(node, "targets") else [node.target]
                if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
                    bad.append(f"{where} writes os.environ")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if _is_environ(node.func.value) and node.func.attr in {
                        "setdefault", "update", "pop", "clear", "__setitem__"}:
                    bad.append(f"{where} os.environ.{node.func.attr}")
                if node.func.attr == "putenv":
                    bad.append(f"{where} os.putenv")
    assert not bad, "\n".join(bad)


SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "zoo")


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_declares_its_public_names(name):
    module = importlib.import_module(f"featcircuits.{name}")
    assert hasattr(module, "__all__"), f"featcircuits.{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"featcircuits.{name}.__all__ names missing objects: {missing}"


def test_top_level_api_is_small_and_complete():
    import featcircuits
    import featcircuits.errors

    names = [n for n in featcircuits.__all__ if n not in featcircuits.errors.__all__]
    assert len(names) <= 32, f"{len(names)} top-level names: keep the public API small"
    assert all(hasattr(featcircuits, n) for n in featcircuits.__all__)
