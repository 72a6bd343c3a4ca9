"""docs/api.md names only what exists: every ``::: path`` imports, and the top-level table
lists exactly ``featcircuits.__all__`` (less the error classes)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "api.md").read_text()


def _resolve(path: str):
    """The object a mkdocstrings identifier names (a module or a name inside one)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


@pytest.mark.parametrize("path", re.findall(r"^::: ([\w.]+)", PAGE, re.MULTILINE))
def test_every_documented_name_is_importable(path):
    assert _resolve(path) is not None


def test_top_level_table_is_featcircuits_all():
    import featcircuits
    import featcircuits.errors

    table = PAGE.split("## Top level", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(\w+)`", table.split("| --- | --- |", 1)[1]))
    public = set(featcircuits.__all__) - set(featcircuits.errors.__all__)
    assert listed == public
    for name in listed:
        assert hasattr(featcircuits, name), name


def test_error_hint_names_are_importable():
    """Names that error hints tell users to import from ``featcircuits`` exist there."""
    import featcircuits

    package = ROOT / "featcircuits"
    told = set()
    for path in package.rglob("*.py"):
        told |= set(re.findall(r"featcircuits import (\w+)", path.read_text()))
        told |= set(re.findall(r"\bfc\.(\w+)\(", path.read_text()))
    missing = sorted(name for name in told if not hasattr(featcircuits, name)
                     and not (package / name).is_dir())
    assert not missing, f"hints and docstrings name featcircuits.{missing}, which do not exist"
