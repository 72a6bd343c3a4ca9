"""Every ```python block in README.md and docs/ runs on the bundled model.

A block whose first line is ``# not run: <reason>`` is skipped (e.g. it needs the model hub).
Blocks of one page run in order in one namespace, like a reader pasting them into a session.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks(page: Path) -> list[str]:
    return [block for block in BLOCK.findall(page.read_text(encoding="utf-8"))
            if not block.lstrip().startswith("# not run:")]


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FEATCIRCUITS_OUT", str(tmp_path))
    namespace: dict = {"__name__": "__docs__"}
    for index, block in enumerate(_blocks(page)):
        # nnsight reads trace bodies back from source, so each block lives in a real file
        source = tmp_path / f"{page.stem}_block{index}.py"
        source.write_text(block, encoding="utf-8")
        exec(compile(block, str(source), "exec"), namespace)  # noqa: S102 - the docs are ours


def test_pages_have_runnable_or_marked_blocks():
    """A python block that is neither run nor marked would silently rot."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in BLOCK.findall(text):
            assert block.strip(), f"empty python block in {page.name}"
    assert os.path.exists(ROOT / "docs" / "quickstart.md")
