"""Bad training flags, clear error: `train-sae` and `fit-ica` refuse values that would train
something other than what was asked (a ReLU SAE for --k 0, the full width for
--n-components 0, ...) with a message naming the value, and no traceback.

Each test's docstring is one line "tried → expected"; docs/reliability.md is built from them
(``python tests/support/reliability_report.py``).
"""

from __future__ import annotations

import pytest

from featcircuits.cli.main import main

TRAIN = ["--quiet", "train-sae", "--site", "resid_out.1", "--steps", "2", "--n-tokens", "100",
         "--eval-texts", "0"]
ICA = ["--quiet", "fit-ica", "--site", "resid_out.1", "--n-tokens", "100", "--eval-texts", "0"]


@pytest.mark.parametrize(("argv", "message"), [
    ([*TRAIN, "--k", "0"], "argument --k: must be >= 1, got 0"),
    ([*TRAIN, "--k", "-3"], "argument --k: must be >= 1, got -3"),
    ([*TRAIN, "--expansion", "nan"], "argument --expansion: must be a finite number > 0, got nan"),
    ([*TRAIN, "--expansion", "inf"], "argument --expansion: must be a finite number > 0, got inf"),
    ([*TRAIN, "--expansion", "0"], "argument --expansion: must be a finite number > 0, got 0"),
    ([*TRAIN, "--n-features", "0"], "argument --n-features: must be >= 1, got 0"),
    ([*TRAIN, "--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    ([*TRAIN, "--l1", "inf"], "argument --l1: must be a finite number, got inf"),
    ([*ICA, "--n-components", "0"], "argument --n-components: must be >= 1, got 0"),
    ([*ICA, "--max-iter", "0"], "argument --max-iter: must be >= 1, got 0"),
    ([*ICA, "--tol", "nan"], "argument --tol: must be a finite number > 0, got nan"),
], ids=lambda value: " ".join(value[-2:]) if isinstance(value, list) else None)
def test_bad_training_flag_is_a_usage_error(tmp_path, capsys, argv, message):
    """`train-sae --k 0`, `--expansion nan|inf|0`, `--n-features 0`, `--lr nan`, `--l1 inf`;
    `fit-ica --n-components 0`, `--max-iter 0`, `--tol nan` → exit 2 before any work, the
    message names the flag and the value, no traceback, nothing written."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [TRAIN, ICA], ids=["train-sae", "fit-ica"])
def test_n_ctx_beyond_the_model_positions_is_refused(tmp_path, capsys, command):
    """`train-sae` / `fit-ica --n-ctx 1000` on the bundled model (64 positions) → exit 1,
    ParameterError naming 1000, the limit 64 and `--n-ctx 64 or less`, before collecting."""
    code = main([*command, "--n-ctx", "1000", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "--n-ctx 1000 exceeds the model's 64 positions" in err, err
    assert "hint: use --n-ctx 64 or less" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "cfg.json").exists()
