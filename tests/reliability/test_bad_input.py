"""Bad input, clear error: every case raises a featcircuits error whose message names the
offending value (and whose hint says the fix), at the point where the bad value enters.

Each test's docstring is one line "tried → expected"; docs/reliability.md is built from them
(``python tests/support/reliability_report.py``).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from featcircuits import (
    DictionaryLoadError,
    FeatureIdError,
    GraphError,
    NonFiniteError,
    OutputError,
    ParameterError,
    PromptError,
    SiteError,
    WidthMismatchError,
    load_dictionary,
    save_dictionary,
)
from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit, hybrid_circuit
from featcircuits.dictionaries import SparseAutoencoder
from featcircuits.dictionaries.io import check_dictionary_fits
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.engine.cache import RunCache
from featcircuits.engine.edits import check_finite_activations
from featcircuits.engine.runs import CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.graph import threshold
from featcircuits.graph.io import read_json, write_json
from featcircuits.model.loading import load_model, underlying_module
from featcircuits.model.sites import Site, architecture
from featcircuits.patching.experiment import PatchingExperiment
from featcircuits.patching.search import backward_elimination, features_needed
from featcircuits.render.examples import example_circuit
from featcircuits.tasks.prompts import read_prompts, tokenize_prompts
from featcircuits.writes import atomic_path, atomic_write_text

QUIET = RunSettings(progress=False)
PROMPTS = pd.DataFrame({
    "clean": ["w1 w2 w3 w4", "w6 w7 w8 w9"],
    "corrupt": ["w1 w20 w3 w4", "w6 w21 w8 w9"],
    "answer": ["w30", "w31"],
    "wrong_answer": ["w40", "w41"],
})


def _sae(width: int = 32, site: str = "resid_out.0", n_features: int = 48,
         meta: dict | None = None) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(width, n_features, site=site, meta=meta)
    with torch.no_grad():
        sae.b_enc.uniform_(0.0, 0.2)
    return sae


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt_neox"]


def _message(error: pytest.ExceptionInfo) -> str:
    return str(error.value)


# ------------------------------------------------------------------ sites and models
@pytest.mark.parametrize("name", ["resid_ou.1", "resid_out.-1", "embed.2", "resid_out",
                                  "blocks.1.hook_foo", "layers/3", 42])
def test_unknown_site_names_the_site(name):
    """Malformed or unknown site names → SiteError quoting the name, hint shows the syntax."""
    with pytest.raises(SiteError) as error:
        Site.parse(name)
    text = _message(error)
    assert repr(name) in text or str(name) in text
    assert error.value.hint


def test_site_layer_beyond_the_model(model):
    """Site layer past the last block (resid_out.7 on 2 layers) → SiteError with the range."""
    with pytest.raises(SiteError, match=r"resid_out\.7 is out of range.*2 layers") as error:
        Site.parse("resid_out.7").module(model)
    assert "0 to 1" in error.value.hint


def test_unsupported_architecture():
    """A model whose model_type has no site map (mamba) → SiteError naming it, hint says
    module:path."""
    module = torch.nn.Linear(2, 2)
    module.config = SimpleNamespace(model_type="mamba", hidden_size=2)
    with pytest.raises(SiteError, match="unsupported architecture 'mamba'") as error:
        architecture(module)
    assert "module:" in error.value.hint


# ---------------------------------------------------------------------- dictionaries
def test_dictionary_width_differs_from_site(model):
    """A 16-wide dictionary at a 32-wide site → WidthMismatchError naming both widths and
    the model the dictionary was trained on."""
    sae = _sae(width=16, meta={"model_name": "EleutherAI/pythia-70m"})
    with pytest.raises(WidthMismatchError) as error:
        PatchingExperiment(model, sae, PROMPTS, settings=QUIET)
    text = _message(error)
    assert "d_in=16" in text and "width 32" in text and "pythia-70m" in text


def test_saved_dictionary_loaded_for_another_model(tmp_path, model):
    """load_dictionary(..., model=) of a dictionary saved for d_model 24 → WidthMismatchError
    before any forward pass."""
    save_dictionary(_sae(width=24), tmp_path / "d")
    with pytest.raises(WidthMismatchError, match="d_in=24.*width 32"):
        load_dictionary(tmp_path / "d", model=model)


def test_token_basis_from_another_vocabulary(model):
    """A token basis of 50 tokens on a model with a 64-token vocabulary → WidthMismatchError
    naming both sizes, hint TokenBasis.from_model."""
    basis = TokenBasis(torch.randn(50, 32))
    with pytest.raises(WidthMismatchError, match="50 tokens.*vocabulary has 64") as error:
        check_dictionary_fits(basis, model, "embed")
    assert "from_model" in error.value.hint
    check_dictionary_fits(TokenBasis.from_model(model), model, "embed")  # the right one fits


@pytest.mark.parametrize("tensor", ["W_dec", "b_enc", "threshold"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_dictionary_weights(tmp_path, model, tensor, bad):
    """NaN/inf in a dictionary's weights (saved, or in memory) → NonFiniteError naming the
    tensor, both on load and when the dictionary meets a model."""
    sae = SparseAutoencoder(32, 48, activation="jumprelu", site="resid_out.0")
    with torch.no_grad():
        getattr(sae, tensor).view(-1)[3] = bad
    with pytest.raises(NonFiniteError, match=tensor):
        check_dictionary_fits(sae, model, "resid_out.0")
    from safetensors.torch import load_file, save_file

    save_dictionary(sae.__class__(32, 48, site="resid_out.0"), tmp_path / "d")
    weights_path = tmp_path / "d" / "sae_weights.safetensors"
    weights = load_file(str(weights_path))
    name = "W_dec" if tensor == "threshold" else tensor
    weights[name].view(-1)[0] = bad
    save_file(weights, str(weights_path))
    cfg_path = tmp_path / "d" / "cfg.json"  # drop the checksum so the NaN itself is seen
    cfg = json.loads(cfg_path.read_text())
    cfg["featcircuits"].pop("sha256")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(NonFiniteError, match=name):
        load_dictionary(tmp_path / "d")


@pytest.mark.parametrize("ids, pattern", [
    ([48], "feature id 48 is out of range"),
    ([-1], "feature id -1 is out of range"),
    ([3, 5, 3], "feature id 3 is listed more than once"),
    ([0.5], "must be integers"),
])
def test_bad_feature_ids(model, ids, pattern):
    """Feature ids out of range, negative, duplicated or fractional → FeatureIdError naming
    the first bad id and the valid range."""
    experiment = PatchingExperiment(model, _sae(), PROMPTS, settings=QUIET)
    with pytest.raises(FeatureIdError, match=pattern):
        experiment.evaluate([ids])


def test_missing_dictionary_folder(tmp_path):
    """A dictionary path that does not exist → DictionaryLoadError quoting the path, hint
    lists the expected files."""
    with pytest.raises(DictionaryLoadError, match="nowhere") as error:
        load_dictionary(tmp_path / "nowhere")
    assert "cfg.json" in error.value.hint


# --------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("empty", ["list", "frame", "csv-header-only", "jsonl-blank"])
def test_empty_prompt_lists(tmp_path, model, empty):
    """Empty prompt lists (in memory, or a file with only a header / blank lines) →
    PromptError 'no prompt pairs'."""
    if empty == "list":
        prompts = []
    elif empty == "frame":
        prompts = PROMPTS.iloc[:0]
    elif empty == "csv-header-only":
        (tmp_path / "p.csv").write_text("clean,corrupt,answer,wrong_answer\n")
        with pytest.raises(PromptError, match="no prompt pairs"):
            read_prompts(tmp_path / "p.csv")
        return
    else:
        (tmp_path / "p.jsonl").write_text("\n\n  \n")
        with pytest.raises(PromptError, match="no prompt pairs"):
            read_prompts(tmp_path / "p.jsonl")
        return
    with pytest.raises(PromptError, match="no prompt pairs"):
        PatchingExperiment(model, _sae(), prompts, settings=QUIET)


def test_empty_circuit_inputs(model):
    """No inputs at all for circuit discovery → PromptError 'no inputs given'."""
    with pytest.raises(PromptError, match="no inputs"):
        CircuitRuns(model, {"resid_out.0": _sae()}, [], targets="logit_diff")


def test_pair_of_different_token_lengths(model):
    """Clean/corrupt pair that tokenizes to 4 vs 5 tokens → PromptError naming the row and
    showing both tokenizations."""
    rows = PROMPTS.copy()
    rows.loc[1, "corrupt"] = "w6 w21 w8 w9 w9"
    with pytest.raises(PromptError) as error:
        tokenize_prompts(model.tokenizer, rows)
    text = _message(error)
    assert "row 1" in text and "(4 vs 5)" in text
    assert "['w6', 'w7', 'w8', 'w9']" in text and "['w6', 'w21', 'w8', 'w9', 'w9']" in text


@pytest.mark.parametrize("column", ["answer", "wrong_answer"])
def test_multi_token_answer(model, column):
    """An answer of two tokens ('w30 w31') → PromptError naming the row, column and pieces."""
    rows = PROMPTS.copy()
    rows.loc[0, column] = "w30 w31"
    with pytest.raises(PromptError) as error:
        tokenize_prompts(model.tokenizer, rows)
    text = _message(error)
    assert f"row 0: {column} 'w30 w31' is 2 tokens ['w30', 'w31']" in text


# ------------------------------------------------------------------ non-finite values
@pytest.fixture
def poisoned_model(checkpoint_dirs):
    """A fresh copy of the GPT-NeoX test model (its weights are poisoned by the tests)."""
    return load_model(checkpoint_dirs["gpt_neox"])


def test_nan_in_clean_activations(poisoned_model):
    """A model whose block 1 outputs NaN → NonFiniteError naming the clean run and site
    resid_out.1, raised when the runs are cached."""
    plain = underlying_module(poisoned_model)
    with torch.no_grad():
        plain.gpt_neox.layers[1].mlp.dense_4h_to_h.bias.fill_(math.nan)
    with pytest.raises(NonFiniteError, match=r"clean run has nan at site resid_out\.1, prompt 0"):
        RunCache(poisoned_model, PROMPTS, ["resid_out.0", "resid_out.1"])
    with pytest.raises(NonFiniteError, match=r"clean run.*resid_out\.1"):
        CircuitRuns(poisoned_model, {"resid_out.1": _sae(site="resid_out.1")}, PROMPTS,
                    targets="logit_diff", settings=RunSettings(progress=False))


def test_inf_in_corrupt_activations_only(poisoned_model):
    """An infinite embedding row for a token that only the corrupt prompt of pair 1 uses
    (w21) → NonFiniteError naming the corrupt run and prompt 1 (the clean run passes)."""
    plain = underlying_module(poisoned_model)
    token = poisoned_model.tokenizer.convert_tokens_to_ids("w21")
    with torch.no_grad():
        plain.get_input_embeddings().weight[token] = math.inf
    pattern = r"corrupt run has (inf|-inf|nan) at site resid_out\.0, prompt 1, position \d"
    with pytest.raises(NonFiniteError, match=pattern):
        RunCache(poisoned_model, PROMPTS, ["resid_out.0"])
    # checked chunk by chunk: a chunk's prompts are named by their index in the whole run
    chunked = r"corrupt run has (inf|-inf|nan) at site resid_out\.0, prompt 11, position 2 "
    values = torch.zeros(4, 5, 3)
    values[1, 2, 0] = math.inf
    with pytest.raises(NonFiniteError, match=chunked):
        check_finite_activations(values, site="resid_out.0", run="corrupt", first_prompt=10)
    runs = CircuitRuns(poisoned_model, {"resid_out.0": _sae()}, PROMPTS,
                       targets="logit_diff",
                       settings=RunSettings(progress=False))  # the clean run is fine
    with pytest.raises(NonFiniteError, match=pattern):
        runs.sources("corrupt")


# ------------------------------------------------------------------------- thresholds
BAD_TAUS = [-0.1, math.nan, "high"]


@pytest.mark.parametrize("tau", BAD_TAUS)
def test_bad_graph_threshold(tau):
    """graph.threshold with a negative, NaN or non-numeric tau → ParameterError quoting it."""
    with pytest.raises(ParameterError, match="tau must be"):
        threshold(example_circuit(), tau)


@pytest.mark.parametrize("tau", BAD_TAUS)
@pytest.mark.parametrize("method", ["acdc", "attribution", "hybrid", "attribution-node_tau"])
def test_bad_circuit_thresholds(model, method, tau):
    """ACDC / attribution / hybrid circuits with tau or node_tau negative, NaN or a string →
    ParameterError before any forward pass."""
    dictionaries = {"resid_out.0": _sae()}
    with pytest.raises(ParameterError, match="tau must be"):
        if method == "acdc":
            acdc_circuit(model, dictionaries, PROMPTS, targets="logit_diff", tau=tau)
        elif method == "attribution":
            attribution_circuit(model, dictionaries, PROMPTS, targets="logit_diff", tau=tau)
        elif method == "hybrid":
            hybrid_circuit(model, dictionaries, PROMPTS, targets="logit_diff", tau=tau)
        else:
            attribution_circuit(model, dictionaries, PROMPTS, targets="logit_diff", tau=0.1,
                                node_tau=tau)


@pytest.mark.parametrize("taus", [[-1e-3], [0.1, math.nan], []])
def test_bad_search_taus(model, taus):
    """Backward elimination with a negative, NaN or empty tau grid → ParameterError."""
    experiment = PatchingExperiment(model, _sae(), PROMPTS, settings=QUIET)
    with pytest.raises(ParameterError, match="thresholds"):
        backward_elimination(experiment, taus=taus, progress=False)


@pytest.mark.parametrize("limit", [-0.5, math.nan])
def test_bad_faithfulness_threshold(limit):
    """features_needed (the KL threshold of a faithfulness curve) with a negative or NaN
    threshold → ParameterError (NaN used to return 'never reached' silently)."""
    curve = pd.DataFrame({"n_features": [1, 2, 4], "kl": [0.5, 0.2, 0.01]})
    with pytest.raises(ParameterError, match="threshold_kl must be"):
        features_needed(curve, limit)
    assert features_needed(curve, 0.25)["n_features"] == 2


# --------------------------------------------------------------------- graph versions
@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_graph_json_of_another_version(tmp_path, version):
    """A circuit JSON whose format_version is 2, 0, '1' or missing → GraphError naming the
    version found and the one supported."""
    path = write_json(example_circuit(), tmp_path / "c.json")
    data = json.loads(path.read_text())
    if version is None:
        del data["format_version"]
    else:
        data["format_version"] = version
    path.write_text(json.dumps(data))
    with pytest.raises(GraphError, match=rf"format_version {version!r}; this featcircuits "
                                         r"reads version 1"):
        read_json(path)


# ---------------------------------------------------------------------------- outputs
def test_atomic_writer_into_a_file_path(tmp_path):
    """Writing below a path that is a file (out.txt/x.json) → OutputError quoting the path;
    no temporary file is left behind."""
    (tmp_path / "out.txt").write_text("keep")
    with pytest.raises(OutputError, match="out.txt/x.json"):
        atomic_write_text(tmp_path / "out.txt" / "x.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_writer_onto_a_folder(tmp_path):
    """Writing onto an existing folder → OutputError (was a bare IsADirectoryError); no
    temporary file is left behind."""
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputError, match="taken") as error, \
            atomic_path(tmp_path / "taken") as tmp:
        tmp.write_text("x")
    assert isinstance(error.value, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("command", ["render", "patch", "ioi", "circuit"])
def test_cli_unwritable_out(tmp_path, capsys, command):
    """The CLI (render, patch, ioi, circuit) with --out below a regular file → exit code 1
    and one 'error: cannot write' line plus a hint, before any model is loaded."""
    from featcircuits.cli.main import main

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    if command == "render":
        graph = write_json(example_circuit(), tmp_path / "c.json")
        argv = ["render", str(graph), "-o", str(blocker / "c.dot")]
    elif command == "ioi":
        argv = ["--quiet", "ioi", "--model", "no-such-model", "--out", str(blocker / "ioi")]
    elif command == "circuit":
        argv = ["--quiet", "circuit", "parens", "--model", "no-such-model", "--out",
                str(blocker / "c")]
    else:
        prompts = tmp_path / "p.jsonl"
        rows = [{"clean": "( ( )", "corrupt": "( [ ]", "answer": ")", "wrong_answer": "]"}]
        prompts.write_text("\n".join(json.dumps(r) for r in rows))
        from featcircuits.model.loading import ZOO_DIR

        folder = ZOO_DIR / "tiny" / "dictionaries" / "pca" / "resid_out.1"
        argv = ["--quiet", "patch", "--prompts", str(prompts), "--dictionaries", str(folder),
                "--features", "0", "1", "--out", str(blocker / "r.csv")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "cannot write" in lines[0] and str(blocker) in lines[0]
    assert "hint:" in err
    assert blocker.read_text() == ""

