"""Bad command-line values, clear error: every bad flag value is a usage error (exit 2) naming
the flag, every failure exits 1 with one `error:` line and a hint, and no traceback is
printed unless `--debug` is given.

Each test's docstring is one line "tried → expected"; docs/reliability.md is built from them
(``python tests/support/reliability_report.py``). The cases run ``main()`` in this process
(no interpreter start-up per case): argparse's usage errors raise ``SystemExit(2)`` and the
runners' errors are turned into exit codes by ``main`` itself, exactly as in a subprocess.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from featcircuits.cli.main import main
from featcircuits.model.loading import ZOO_DIR

SAE = str(ZOO_DIR / "tiny" / "dictionaries" / "sae-sparse" / "resid_out.2")
PROMPTS = str(Path(__file__).resolve().parents[2] / "featcircuits" / "data" / "ioi" / "prompts.jsonl")
PATCH = ["--quiet", "patch", "--prompts", PROMPTS, "--dictionaries", SAE]
TRAIN = ["--quiet", "train-sae", "--site", "resid_out.1", "--steps", "2", "--out", "unused"]
ICA = ["--quiet", "fit-ica", "--site", "resid_out.1", "--out", "unused"]
PARENS = ["--quiet", "circuit", "parens", "--out", "unused"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA exists here")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS exists here")

USAGE_ERRORS = [
    (["--quiet", "ioi", "--n-taus", "-3"], "argument --n-taus: must be >= 1, got -3"),
    ([*PATCH, "--n-taus", "0"], "argument --n-taus: must be >= 1, got 0"),
    ([*PATCH, "--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295"),
    ([*PARENS, "--seed", str(2**40)], "argument --seed: must be an integer from 0 to 4294967295"),
    ([*PATCH, "--device", "meta"], "argument --device: device 'meta' holds no data"),
    pytest.param([*PATCH, "--device", "mps"], "argument --device: device 'mps' requested but "
                 "MPS", marks=NO_MPS),
    pytest.param([*PATCH, "--device", "cuda"], "argument --device: device 'cuda' requested "
                 "but CUDA is not available", marks=NO_CUDA),
    ([*PATCH, "--device", "gpu"], "argument --device: unknown device 'gpu'"),
    ([*TRAIN, "--expansion", "nan"], "argument --expansion: must be a finite number > 0"),
    ([*TRAIN, "--expansion", "inf"], "argument --expansion: must be a finite number > 0"),
    ([*TRAIN, "--k", "0"], "argument --k: must be >= 1, got 0"),
    ([*ICA, "--n-components", "0"], "argument --n-components: must be >= 1, got 0"),
    ([*PARENS, "--tau", "inf"], "argument --tau: must be a finite number >= 0, got inf"),
    ([*PARENS, "--tau", "-0.1"], "argument --tau: must be a finite number >= 0"),
    ([*PARENS, "--n-targets", "-1"], "argument --n-targets: must be >= 1, got -1"),
    ([*PARENS, "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--quiet", "dashboard", "--site", "resid_out.2", "--feature", "-4", "-o", "x.html"],
     "argument --feature: must be >= 0, got -4"),
    (["--quiet", "render", "g.json", "-o", "g.png", "--max-nodes", "0"],
     "argument --max-nodes: must be >= 1, got 0"),
]


def _case_id(value):
    return " ".join(value[1:2] + value[-2:]) if isinstance(value, list) else None


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS, ids=_case_id)
def test_bad_flag_value_is_a_usage_error(capsys, argv, message):
    """`ioi --n-taus -3`, `--seed -1` / `2**40`, `--device meta|mps|cuda|gpu` (where absent),
    `train-sae --expansion nan|inf`, `--k 0`, `fit-ica --n-components 0`, `circuit --tau
    inf|-0.1`, `--n-targets -1`, `--batch-size 0`, `dashboard --feature -4`, `render
    --max-nodes 0` → exit 2 at once, the message names the flag and the value, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err, err
    assert "Traceback" not in err


def test_dashboard_unknown_logit_token(tmp_path, capsys):
    """`dashboard --logit-token zzzqqq` (a word the bundled tokenizer lacks: it was read as
    [UNK]) → exit 1, the message names the token, the flag and [UNK], before the corpus scan;
    nothing written."""
    out = tmp_path / "d.html"
    code = main(["--quiet", "dashboard", "--site", "resid_out.2", "--feature", "1",
                 "--logit-token", "zzzqqq", "--n-texts", "2", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "logit_token 'zzzqqq' (--logit-token) is not in the vocabulary" in err, err
    assert "'[UNK]'" in err and "hint:" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_patch_out_unwritable_fails_before_the_computation(capsys, monkeypatch):
    """`patch --out /proc/version` (a folder where no file can be created; it failed after
    the computation) → exit 1 'cannot write in '/proc'' before the model is loaded."""
    if not Path("/proc/version").exists():
        pytest.skip("no /proc here")
    from featcircuits.cli import commands

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(commands, "model_from_args", no_model)
    code = main([*PATCH, "--out", "/proc/version"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "cannot write in '/proc'" in err, err
    assert "--out" in err and "Traceback" not in err


def test_unexpected_error_without_and_with_debug(tmp_path, capsys, monkeypatch):
    """An exception featcircuits does not raise on purpose (a RuntimeError inside `render`)
    → without --debug: exit 1, one 'unexpected error: RuntimeError: …' line and a hint naming
    --debug, no traceback; with --debug (before or after the command) the exception itself
    propagates (Python prints its traceback)."""
    import featcircuits.graph.io as graph_io

    def broken(path):
        raise RuntimeError("boom in the reader")

    monkeypatch.setattr(graph_io, "read_graph", broken)
    argv = ["render", str(tmp_path / "g.json"), "-o", str(tmp_path / "g.png")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "featcircuits render: unexpected error: RuntimeError: boom in the reader" in err
    assert "--debug" in err and "Traceback" not in err
    for debug_argv in (["--debug", *argv], [argv[0], "--debug", *argv[1:]]):
        with pytest.raises(RuntimeError, match="boom in the reader"):
            main(debug_argv)


def test_project_error_with_debug_keeps_its_traceback(tmp_path):
    """A project error (`render` of a missing graph file) with --debug → the GraphError itself
    propagates instead of the one-line message."""
    from featcircuits.errors import GraphError

    with pytest.raises(GraphError, match="does not exist"):
        main(["--debug", "render", str(tmp_path / "missing.json"), "-o",
              str(tmp_path / "g.png")])


def test_model_folder_with_a_pickle_payload(tmp_path, capsys):
    """`--model DIR` whose pytorch_model.bin is a pickle that would create a marker file when
    unpickled → exit 1, ModelLoadError naming the blocked global, no traceback, and the
    marker never appears (weights are loaded with weights_only)."""
    folder = tmp_path / "model"
    folder.mkdir()
    tiny = ZOO_DIR / "tiny"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny / name).read_bytes())
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"transformer.wte.weight": Payload()}, folder / "pytorch_model.bin")
    code = main(["--quiet", "patch", "--prompts", PROMPTS, "--dictionaries", SAE,
                 "--model", str(folder)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "are a pickle holding more than tensors (refused, nothing in it was run)" in err
    assert "system" in err and "Traceback" not in err
    assert not marker.exists()
