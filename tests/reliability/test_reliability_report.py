"""docs/reliability.md's table is generated from the reliability tests and kept current."""

from __future__ import annotations

from tests.support.reliability_report import (
    PAGE,
    REGENERATE,
    reliability_files,
    render,
    rows,
)


def test_reliability_page_is_up_to_date():
    current = PAGE.read_text(encoding="utf-8")
    assert render(current) == current, (
        f"docs/reliability.md is out of date with the reliability tests; run: {REGENERATE}")


def test_table_covers_every_reliability_test(tmp_path):
    names = {path.name for path in reliability_files()}
    assert {"test_bad_input.py", "test_hostile_files.py", "test_hostile_graphs.py",
            "test_interrupted_writes.py", "test_determinism.py"} <= names
    found = rows()
    assert len(found) == len({test for test, *_ in found})
    fake = tmp_path / "test_memory.py"  # the memory tests land later: picked up by name
    fake.write_text('import pytest\n\n\n@pytest.mark.parametrize("n", [1, 2, 3])\n'
                    '@pytest.mark.parametrize("m", ["a", "b"])\n'
                    'def test_bounded(n, m):\n    """1 000 prompts → peak memory under 2 GB"""\n')
    assert rows([fake]) == [("test_memory.py::test_bounded", "1 000 prompts",
                             "peak memory under 2 GB", "6")]
