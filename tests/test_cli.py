"""The command line: exit codes, info, patch and ioi end to end on the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from featcircuits.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAE = ROOT / "featcircuits/zoo/tiny/dictionaries/sae-sparse/resid_out.2"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "featcircuits", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_info_json_in_a_subprocess():
    result = _run("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert "tiny" in info["zoo"]
    assert {"sae-sparse", "sae-dense", "pca", "ica"} <= set(info["zoo"]["tiny"]["dictionaries"])


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["patch", "--no-such-flag"])
    assert info.value.code == 2


def test_runtime_error_exits_1_with_one_line_and_hint(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"clean": "a", "corrupt": "b", "answer": "c",
                                   "wrong_answer": "d"}) + "\n")
    code = main(["patch", "--prompts", str(prompts), "--dictionaries", str(tmp_path / "none"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("featcircuits patch: error: dictionary path")
    assert "hint:" in err


def test_patch_end_to_end(tmp_path, capsys):
    rows = pd.read_json(ROOT / "data/ioi/prompts.jsonl", lines=True)
    rows = rows[rows["corruption"] == "abc"].head(4)
    prompts = tmp_path / "p.csv"
    rows[["clean", "corrupt", "answer", "wrong_answer"]].to_csv(prompts, index=False)
    out = tmp_path / "patch.csv"
    code = main(["patch", "--prompts", str(prompts), "--dictionaries", str(SAE),
                 "--features", "27", "3", "--out", str(out), "--quiet"])
    assert code == 0
    table = pd.read_csv(out)
    assert table.loc[0, "n_features"] == 2 and table.loc[0, "features"] == "27 3"
    assert "logit_diff" in capsys.readouterr().out


def test_ioi_end_to_end(tmp_path, capsys):
    code = main(["ioi", "--layers", "3", "--bases", "pca", "neuron", "--n-prompts", "4",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["basis"]) == {"pca", "neuron"} and set(results["site"]) == {"resid_out.3"}
    assert (tmp_path / "curves.png").exists()
    assert "features needed" in capsys.readouterr().out
