"""The command line: every subcommand end to end on the bundled model in a subprocess
(``python -m featcircuits ...``), exit codes, shared flags, remote execution, docs/cli.md.

The subprocesses start together (one module fixture) so their start-up overlaps; each test
then checks one command's exit code, stdout and files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nnsight
import pandas as pd
import pytest
import torch

from featcircuits.cli.main import main
from featcircuits.dictionaries.io import load_dictionary
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import ModelLoadError, ParameterError
from featcircuits.model.loading import load_model, remote_mode, trace, underlying_module

ROOT = Path(__file__).resolve().parents[2]
SAE = ROOT / "featcircuits/zoo/tiny/dictionaries/sae-sparse/resid_out.2"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "featcircuits", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(out folder, {command: CompletedProcess})`` for every subcommand."""
    from featcircuits.tasks.corpus import corpus_documents

    out = tmp_path_factory.mktemp("cli")
    rows = pd.read_json(ROOT / "featcircuits/data/ioi/prompts.jsonl", lines=True)
    rows = rows[rows["corruption"] == "abc"].head(4)
    rows[["clean", "corrupt", "answer", "wrong_answer"]].to_csv(out / "p.csv", index=False)
    (out / "texts.txt").write_text("\n".join(corpus_documents(40, seed=3)) + "\n")
    commands = {
        "info": ["info", "--json"],
        "ioi": ["ioi", "--layers", "3", "--bases", "pca", "neuron", "--n-prompts", "4",
                "--out", str(out / "ioi"), "--quiet"],
        "patch": ["patch", "--prompts", str(out / "p.csv"), "--dictionaries", str(SAE),
                  "--features", "27", "3", "--out", str(out / "patch.csv"), "--dtype",
                  "bfloat16", "--quiet"],
        "circuit": ["circuit", "parens", "--n-texts", "2", "--n-targets", "1", "--method",
                    "attribution", "--out", str(out / "circuit"), "--quiet"],
        "dashboard": ["dashboard", "--site", "resid_out.2", "--feature", "3", "--n-texts", "6",
                      "-o", str(out / "dash.html"), "--remote", "local", "--quiet"],
        "train-sae": ["train-sae", "--site", "resid_out.2", "--n-tokens", "600", "--steps", "20",
                      "--batch-size", "64", "--n-features", "64", "--k", "4", "--eval-texts",
                      "4", "--dtype", "bf16", "--out", str(out / "sae"), "--quiet"],
        "fit-ica": ["fit-ica", "--site", "resid_out.1", "--texts", str(out / "texts.txt"),
                    "--n-tokens", "800", "--n-components", "16", "--eval-texts", "4",
                    "--out", str(out / "ica"), "--quiet"],
    }
    started = {name: _start(*args) for name, args in commands.items()}
    results = {name: _finish(process) for name, process in started.items()}
    results["render"] = _finish(_start("render", str(out / "circuit" / "parens.json"),
                                       "-o", str(out / "circuit.html"), "--quiet"))
    return out, results


def _ok(results: dict, name: str) -> subprocess.CompletedProcess:
    result = results[name]
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow  # one subprocess per command (~70 s on 2 cores): make test-slow, CI
def test_info(runs):
    info = json.loads(_ok(runs[1], "info").stdout)
    assert "tiny" in info["zoo"]
    assert {"sae-sparse", "sae-dense", "pca", "ica"} <= set(info["zoo"]["tiny"]["dictionaries"])


@pytest.mark.slow  # one subprocess per command (~70 s on 2 cores): make test-slow, CI
def test_ioi(runs):
    out, results = runs
    assert "features needed" in _ok(results, "ioi").stdout
    table = pd.read_csv(out / "ioi" / "results.csv")
    assert set(table["basis"]) == {"pca", "neuron"} and set(table["site"]) == {"resid_out.3"}
    assert (out / "ioi" / "curves.png").stat().st_size > 1000


@pytest.mark.slow  # one subprocess per command (~70 s on 2 cores): make test-slow, CI
def test_patch_in_bfloat16(runs):
    out, results = runs
    assert "logit_diff" in _ok(results, "patch").stdout
    table = pd.read_csv(out / "patch.csv")
    assert table.loc[0, "n_features"] == 2 and table.loc[0, "features"] == "27 3"
    assert all(pd.notna(table.loc[0, ["kl", "logit_diff", "answer_prob"]]))


@pytest.mark.slow  # one subprocess per command (~70 s on 2 cores): make test-slow, CI
def test_circuit_and_render(runs):
    out, results = runs
    _ok(results, "circuit")
    graph = json.loads((out / "circuit" / "parens.json").read_text())
    assert graph["nodes"] and (out / "circuit" / "parens.png").exists()
    _ok(results, "render")
    html = (out / "circuit.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and len(html) > 1000


@pytest.mark.slow  # one subprocess per command (~70 s on 2 cores): make test-slow, CI
def test_dashboard_through_the_remote_round_trip(runs):
    out, results = runs
    assert "feature 3 at resid_out.2" in _ok(results, "dashboard").stdout
    assert "resid_out.2" in (out / "dash.html").read_text()


@pytest.mark.slow  # one subprocess per command (~70 s on 2 cores): make test-slow, CI
def test_train_sae_topk_in_bfloat16(runs):
    out, results = runs
    stdout = _ok(results, "train-sae").stdout
    cfg = json.loads((out / "sae" / "cfg.json").read_text())
    assert cfg["d_sae"] == 64 and cfg["dtype"] == "float32"
    sae = load_dictionary(out / "sae")
    assert sae.site == "resid_out.2" and sae.k == 4
    assert sae.directions.dtype == torch.float32
    # the evaluation ran (in the model's bf16) and a TopK SAE has at most k active features
    assert 0 < sae.meta["l0"] <= 4.0 + 1e-6
    assert f"{sae.meta['l0']:.4f}" in stdout
    assert -1.0 < sae.meta["variance_explained"] < 1.0
    assert sae.meta["train_tokens"] == 600
    log = pd.read_csv(out / "sae" / "training_log.csv")
    assert log["step"].max() == 20
    assert (out / "sae" / "checkpoint" / "checkpoint.pt").exists()


@pytest.mark.slow  # one subprocess per command (~70 s on 2 cores): make test-slow, CI
def test_fit_ica_from_a_text_file(runs):
    out, results = runs
    stdout = _ok(results, "fit-ica").stdout
    basis = load_dictionary(out / "ica")
    assert type(basis).__name__ == "ICABasis" and basis.n_features == 16
    assert basis.site == "resid_out.1" and basis.meta["train_tokens"] == 800
    # 16 of 128 directions: a projection, so variance explained is well below 1
    assert 0.05 < basis.meta["variance_explained"] < 0.999
    assert "converged" in stdout and "ce_loss_recovered" in stdout


def test_fit_ica_pca_method_is_exact_at_full_rank(tmp_path, capsys):
    code = main(["fit-ica", "--method", "pca", "--site", "resid_out.0", "--n-tokens", "300",
                 "--eval-texts", "3", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    basis = load_dictionary(tmp_path)
    assert type(basis).__name__ == "PCABasis" and basis.n_features == 128
    assert basis.meta["variance_explained"] == pytest.approx(1.0, abs=1e-4)
    assert "variance_explained" in capsys.readouterr().out


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["patch", "--no-such-flag"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["train-sae", "--site", "resid_out.1", "--out", "x", "--l1", "1", "--k", "3"])
    assert info.value.code == 2  # --l1 and --k exclude each other


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


def test_bad_site_and_texts_exit_1(tmp_path, capsys):
    code = main(["train-sae", "--site", "resid_out.9", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "resid_out.9" in err.splitlines()[0]
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    code = main(["fit-ica", "--site", "resid_out.1", "--texts", str(tmp_path / "t.txt"),
                 "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "2 documents" in err and "hint:" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_unavailable_device_is_a_parameter_error():
    with pytest.raises(ParameterError, match="CUDA is not available"):
        load_model("tiny", device="cuda")


# ------------------------------------------------------- no CLI in the library, no state
def _library_files() -> list[Path]:
    package = ROOT / "featcircuits"
    return sorted(path for path in package.rglob("*.py")
                  if "cli" not in path.relative_to(package).parts[:1]
                  and path.name != "__main__.py")  # python -m featcircuits: the CLI's entry


def test_library_never_imports_the_command_line():
    import ast

    offenders = []
    for path in _library_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if name == "featcircuits.cli" or name.startswith("featcircuits.cli.")
                          or name.startswith("argparse")
                          and "experiments" in path.relative_to(ROOT).parts]
    assert not offenders, offenders


def test_nothing_writes_os_environ():
    import ast

    writes = []
    for path in sorted((ROOT / "featcircuits").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign)
                       else [])
            for target in targets:
                if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                    writes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and ast.unparse(node.func.value) == "os.environ"
                    and node.func.attr in ("update", "setdefault", "pop", "clear", "popitem")):
                writes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not writes, writes


def test_quiet_run_leaves_environment_and_library_bars_as_they_were(tmp_path, capsys):
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    environ = dict(os.environ)
    bars = (transformers_logging.is_progress_bar_enabled(),
            hub_utils.are_progress_bars_disabled())
    code = main(["--quiet", "fit-ica", "--method", "pca", "--site", "resid_out.0",
                 "--n-tokens", "100", "--eval-texts", "0", "--out", str(tmp_path)])
    assert code == 0 and capsys.readouterr().err.count("%|") == 0  # no progress bar drawn
    # torch's lazy imports may add TORCHINDUCTOR_* cache settings; nothing else may change
    assert {k: v for k, v in os.environ.items() if not k.startswith("TORCH")} == {
        k: v for k, v in environ.items() if not k.startswith("TORCH")}
    assert (transformers_logging.is_progress_bar_enabled(),
            hub_utils.are_progress_bars_disabled()) == bars


def test_command_table_is_the_parser(capsys):
    from featcircuits.cli.main import COMMANDS, build_parser

    # the parser's own list of commands, as a user sees it on an unknown command
    with pytest.raises(SystemExit):
        build_parser().parse_args(["no-such-command"])
    choices = re.search(r"\(choose from (.*)\)", capsys.readouterr().err).group(1)
    assert [name.strip("'") for name in choices.split(", ")] == [
        command.name for command in COMMANDS]
    for command in COMMANDS:
        assert callable(command.add_arguments) and callable(command.run) and command.help


def test_settings_from_the_shared_flags():
    from featcircuits.cli.flags import settings_from_args
    from featcircuits.cli.main import build_parser

    args = build_parser().parse_args(
        ["patch", "--prompts", "p", "--dictionaries", "d", "--max-memory", "1MB",
         "--batch-size", "7", "--seed", "5", "--quiet"])
    assert settings_from_args(args) == RunSettings(max_memory=2**20, max_rows=7, seed=5,
                                                   progress=False)
    args.max_memory = "lots"
    with pytest.raises(ParameterError, match="lots"):
        settings_from_args(args)


def test_experiments_are_library_calls_without_side_effects(tmp_path):
    """Keyword arguments in, a result out; no files without ``out``; the caller's torch
    random state is untouched (the experiment seeds a forked generator)."""
    from featcircuits.experiments import CircuitResult, parens_circuit

    state = torch.get_rng_state()
    result = parens_circuit("tiny", n_texts=1, n_targets=1, method="attribution",
                            settings=RunSettings(seed=3, progress=False))
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(result, CircuitResult) and result.paths == {}
    assert result.graph.number_of_nodes() > 0 and result.features is not None
    assert "attribution circuit" in result.report()
    written = parens_circuit("tiny", n_texts=1, n_targets=1, method="attribution",
                             out=tmp_path, settings=RunSettings(seed=3, progress=False))
    assert set(written.paths) >= {"json", "png", "features"}
    assert all(path.exists() for path in written.paths.values())
    assert written.faithfulness == result.faithfulness  # same seed, same numbers


# ---------------------------------------------------------------------------- remote
def test_remote_without_api_key_is_a_model_load_error(monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(ModelLoadError, match="NDIF API key") as info:
        load_model("tiny", remote=True)
    assert "NDIF_API_KEY" in info.value.hint


def test_remote_model_opens_every_trace_remote(monkeypatch):
    """A remote model (meta weights, from the bundled config folder) gets ``remote=True`` on
    the traces of each toolkit entry point; the spy stops each before any network call."""
    from nnsight import LanguageModel

    from featcircuits.dashboards import feature_dashboard_data
    from featcircuits.engine.runs import CircuitRuns
    from featcircuits.engine.settings import RunSettings
    from featcircuits.experiments.parens import parens_setup
    from featcircuits.patching.experiment import PatchingExperiment
    from featcircuits.tasks.prompts import read_prompts
    from featcircuits.train.buffer import collect_activations
    from featcircuits.train.evaluate import evaluate_dictionary

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "offline-test-key")
    model = load_model("tiny", remote=True)
    assert remote_mode(model) is True
    assert next(underlying_module(model).parameters()).is_meta
    seen: list[dict] = []

    class Stop(Exception):
        pass

    def spy(self, *inputs, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(LanguageModel, "trace", spy)
    sae = load_dictionary(SAE)
    prompts = read_prompts(ROOT / "featcircuits/data/ioi/prompts.jsonl").head(2)
    calls = [
        lambda: collect_activations(model, "resid_out.1", ["a b c"], 4, progress=False),
        lambda: evaluate_dictionary(model, sae, "resid_out.2", ["a b c"], progress=False),
        lambda: feature_dashboard_data(model, sae, "resid_out.2", 3, texts=["a b c"],
                                       progress=False),
        lambda: PatchingExperiment(model, sae, prompts,
                                   settings=RunSettings(progress=False)),
        lambda: CircuitRuns(model, {"resid_out.2": sae}, prompts, targets="logit_diff",
                            settings=RunSettings(progress=False)),
        lambda: parens_setup(model, n_texts=1, settings=RunSettings(progress=False)),
    ]
    for call in calls:
        with pytest.raises(Stop):
            call()
    assert len(seen) == len(calls)
    assert all(kwargs.get("remote") is True for kwargs in seen)


def test_local_model_traces_are_not_remote(monkeypatch):
    model = load_model("tiny")
    assert remote_mode(model) is False
    with trace(model, torch.tensor([[1, 2, 3]])):
        logits = model.output.logits.save()
    assert logits.shape[:2] == (1, 3)


@pytest.mark.slow
def test_remote_round_trip_simulation_matches_local():
    """``remote='local'`` serializes each trace like an NDIF request: the trace bodies of
    the evaluation (read, splice, zero-ablate) give the same numbers as a local run."""
    from featcircuits.train.evaluate import evaluate_dictionary

    texts = ["Mary and John went to the store.", "( a ( b ) c )"]
    sae = load_dictionary(SAE)
    here = evaluate_dictionary(load_model("tiny"), sae, "resid_out.2", texts, progress=False)
    simulated = load_model("tiny", remote="local")
    assert remote_mode(simulated) == "local"
    there = evaluate_dictionary(simulated, sae, "resid_out.2", texts, progress=False)
    assert here["ce_spliced"] != here["ce_clean"]
    for key in ("ce_clean", "ce_spliced", "ce_zero", "l0", "variance_explained"):
        assert there[key] == pytest.approx(here[key], rel=1e-5), key


# ------------------------------------------------------------------------------ docs
def test_docs_cli_page_is_generated_from_help():
    from featcircuits.cli.docs import PAGE, updated_page

    text = PAGE.read_text(encoding="utf-8")
    assert updated_page(text) == text, "run: python -m featcircuits.cli.docs"
    for name in ("info", "ioi", "patch", "circuit", "render", "dashboard", "train-sae",
                 "fit-ica"):
        assert f"## `featcircuits {name}`" in text
