"""Determinism of the files the toolkit writes: the same dictionary saved in two processes,
and the same short `train-sae` run (twice, and once killed with SIGKILL after a checkpoint
and resumed), give byte-identical files.

Each test's docstring is one line "tried → expected"; docs/reliability.md is built from them
(``python tests/support/reliability_report.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.determinism_runs import TRAIN_SAE, train, write_dictionaries

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "determinism_runs.py"


def _env(hash_seed: str) -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": hash_seed, "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _start(mode: str, out: Path, hash_seed: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), mode, str(out)], cwd=ROOT,
                            env=_env(hash_seed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _same_files(a: Path, b: Path, names: list[str]) -> None:
    files_a, files_b = _files(a), _files(b)
    for name in names:
        assert name in files_a and name in files_b, (name, sorted(files_a), sorted(files_b))
    differ = [name for name in names if files_a[name] != files_b[name]]
    assert not differ, f"{a} and {b} differ in {differ}"


@pytest.mark.slow
def test_saved_dictionaries_are_byte_identical_across_processes(tmp_path):
    """an SAE (12+ metadata keys), a transcoder (file and folder) and a PCA basis saved in two
    processes (PYTHONHASHSEED 1 vs this one's), safetensors' header metadata kept in a Rust
    hash map → every file byte-identical (metadata keys sorted)."""
    child = _start("--dictionaries", tmp_path / "a", "1")
    try:
        write_dictionaries(tmp_path / "b")  # meanwhile, here
        write_dictionaries(tmp_path / "c")  # and again (a fresh hash map per file)
    finally:
        _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    names = sorted(_files(tmp_path / "b"))
    assert {"sae/sae_weights.safetensors", "sae/cfg.json", "layer_1.safetensors",
            "transcoder/transcoder.safetensors", "pca/sae_weights.safetensors"} <= set(names)
    for other in ("a", "c"):
        assert sorted(_files(tmp_path / other)) == names
        _same_files(tmp_path / other, tmp_path / "b", names)


@pytest.mark.slow
def test_train_sae_twice_and_killed_then_resumed_write_identical_files(tmp_path, capsys):
    """`train-sae` (12 steps, checkpoint every 4) in two processes, and once SIGKILLed right
    after its first checkpoint then run again with --resume → identical
    sae_weights.safetensors, cfg.json (no timings saved) and training_log.csv."""
    from featcircuits.cli.main import main

    other = _start("--train", tmp_path / "other", "1")
    killed = _start("--train-killed", tmp_path / "killed", "2")
    try:
        assert train(tmp_path / "here") == 0
    finally:
        _, err_other = other.communicate(timeout=300)
        _, err_killed = killed.communicate(timeout=300)
    assert other.returncode == 0, err_other[-2000:]
    assert killed.returncode == -9, (killed.returncode, err_killed[-2000:])
    assert (tmp_path / "killed" / "checkpoint" / "checkpoint.pt").is_file()
    assert not (tmp_path / "killed" / "sae_weights.safetensors").exists()
    assert main([*TRAIN_SAE, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    capsys.readouterr()
    names = ["sae_weights.safetensors", "cfg.json", "training_log.csv"]
    _same_files(tmp_path / "here", tmp_path / "other", names)
    _same_files(tmp_path / "here", tmp_path / "killed", names)
