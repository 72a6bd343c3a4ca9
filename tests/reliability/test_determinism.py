"""Determinism: the IOI example and the circuit example, run twice with the same seed (one
run in a fresh interpreter with another hash seed, one in this process), write
byte-identical CSV, JSON, text and image files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.determinism_runs import run_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_examples_are_byte_identical_across_runs(tmp_path, capsys):
    """`featcircuits ioi` and `featcircuits circuit parens` twice with seed 3 (another
    process, PYTHONHASHSEED 1 vs this one's) → every output file byte-identical."""
    env = {**os.environ, "PYTHONHASHSEED": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    script = ROOT / "tests" / "support" / "determinism_runs.py"
    other = subprocess.Popen([sys.executable, str(script), str(tmp_path / "a")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run_all(tmp_path / "b")  # meanwhile, here (both cores busy)
    finally:
        _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-2000:]
    capsys.readouterr()
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                     if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                     if p.is_file())
    assert files_a == files_b
    suffixes = {p.suffix for p in files_a}
    assert {".csv", ".json", ".txt", ".png"} <= suffixes, suffixes
    differ = [str(p) for p in files_a
              if (tmp_path / "a" / p).read_bytes() != (tmp_path / "b" / p).read_bytes()]
    assert not differ, f"outputs differ between two runs with the same seed: {differ}"
