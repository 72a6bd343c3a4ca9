"""A killed `train-sae` resumed with other flags: the checkpoint records every flag that
determines the weights, and a resume that changes one is refused, naming each changed flag
with its old and new value (else the result would match neither run).

Each test's docstring is one line "tried → expected"; docs/reliability.md is built from them
(``python tests/support/reliability_report.py``).
"""

from __future__ import annotations

import pytest

from featcircuits.cli.main import main
from tests.support.determinism_runs import TRAIN_SAE


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """An output folder whose checkpoint was written by TRAIN_SAE (--batch-size 32,
    --n-tokens 600)."""
    out = tmp_path_factory.mktemp("resume")
    assert main([*TRAIN_SAE, "--out", str(out)]) == 0
    assert (out / "checkpoint" / "checkpoint.pt").is_file()
    return out


def _with(flag: str, value: str) -> list[str]:
    argv = list(TRAIN_SAE)
    argv[argv.index(flag) + 1] = value
    return argv


@pytest.mark.parametrize(("flag", "old", "new"), [("--batch-size", "32", "16"),
                                                  ("--n-tokens", "600", "500")])
def test_resume_with_a_changed_flag_is_refused(checkpointed, capsys, flag, old, new):
    """`train-sae --resume` after a checkpoint, with --batch-size or --n-tokens changed →
    exit 1, TrainingError naming the flag, its old and new values, and the fix (same flags or
    a new --out); the checkpoint is kept."""
    before = (checkpointed / "checkpoint" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    code = main([*_with(flag, new), "--out", str(checkpointed), "--resume"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{flag}: {int(old)!r} then, {int(new)!r} now" in err, err
    assert "hint:" in err and "same settings" in err and "another output folder" in err
    assert "Traceback" not in err
    assert (checkpointed / "checkpoint" / "checkpoint.pt").read_bytes() == before


def test_resume_with_the_same_flags_is_accepted(checkpointed, capsys):
    """`train-sae --resume` with the flags of the checkpoint (the run had finished) → exit 0,
    the same weights file as before."""
    weights = (checkpointed / "sae_weights.safetensors").read_bytes()
    assert main([*TRAIN_SAE, "--out", str(checkpointed), "--resume"]) == 0
    capsys.readouterr()
    assert (checkpointed / "sae_weights.safetensors").read_bytes() == weights
