"""The shared engine pieces: one source vocabulary, one memory estimate, one tiling check.

Both clients (``PatchingExperiment`` and ``CircuitRuns``) must use them: the tests drive
each client and compare with independent references (the formulas as written before the
pieces were shared, plain-torch derangement checks, untiled runs).
"""

from __future__ import annotations

import pytest
import torch

import featcircuits.engine.runs as runs_module
import featcircuits.engine.tiling as tiling_module
import featcircuits.patching.experiment as experiment_module
from featcircuits.dictionaries.bases import NeuronBasis
from featcircuits.engine.memory import FLOAT_BYTES, bytes_per_row
from featcircuits.engine.runs import CircuitRuns, SiteOps
from featcircuits.engine.sources import (
    ABLATIONS,
    PATCHING_SOURCES,
    SOURCES,
    check_source,
    resample_index,
)
from featcircuits.engine.tiling import PrefixTiling, is_tiling_mismatch, tiling_possible
from featcircuits.errors import ParameterError
from featcircuits.model.loading import model_config
from featcircuits.patching.experiment import PatchingExperiment
from tests.support.factories import PROMPTS, QUIET, random_sae


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt_neox"]


# -------------------------------------------------------------------------- sources
def test_one_vocabulary_covers_both_clients():
    assert set(PATCHING_SOURCES) | set(ABLATIONS) == set(SOURCES)
    assert set(PATCHING_SOURCES) == {"clean", "zero", "mean", "resample"}
    assert set(ABLATIONS) == {"zero", "mean", "position_mean", "resample", "corrupt"}


def test_check_source_names_the_bad_value_and_the_choices():
    assert check_source("mean", ABLATIONS) == "mean"
    with pytest.raises(ParameterError, match="unknown ablation 'avg'") as info:
        check_source("avg", ABLATIONS, kind="ablation")
    assert "zero, mean, position_mean, resample, corrupt" in info.value.hint
    with pytest.raises(ParameterError, match="source 'corrupt' does not apply to patching"):
        check_source("corrupt", PATCHING_SOURCES, where="patching")


def test_both_clients_validate_with_the_shared_check(model):
    sae = random_sae(32, "resid_out.0")
    with pytest.raises(ParameterError, match="unknown source 'avg'") as info:
        PatchingExperiment(model, sae, PROMPTS, source="avg", settings=QUIET)
    assert "or a tensor [n_features]" in info.value.hint
    with pytest.raises(ParameterError, match="source 'corrupt' does not apply"):
        PatchingExperiment(model, sae, PROMPTS, source="corrupt", settings=QUIET)
    runs = CircuitRuns(model, {"resid_out.0": sae}, PROMPTS, targets="logit_diff")
    with pytest.raises(ParameterError, match="unknown ablation 'avg'"):
        runs.sources("avg")
    with pytest.raises(ParameterError, match="ablation 'clean' does not apply"):
        runs.sources("clean")


def test_resample_index_is_a_seeded_derangement_within_lengths():
    lengths = torch.tensor([3, 5, 3, 5, 5, 7, 3])
    index = resample_index(lengths, seed=4)
    assert torch.equal(index, resample_index(lengths, seed=4))
    assert sorted(index.tolist()) == list(range(7))               # a permutation
    assert torch.equal(lengths[index], lengths)                   # within length groups
    assert index[5] == 5                                          # no peer: itself
    assert all(index[i] != i for i in range(7) if i != 5)         # everyone else moves
    assert any(not torch.equal(resample_index(lengths, seed=s), index) for s in range(5))


# --------------------------------------------------------------------------- memory
def test_patching_bytes_per_row_equals_the_formula(model):
    """``FLOAT_BYTES · T · (vocab + 16 T + Σ_site (encoded + 3 used + 24 d_model))``, with
    ``encoded`` the used columns for separable dictionaries, else every feature."""
    from featcircuits.dictionaries.sae import SparseAutoencoder

    sae = SparseAutoencoder(32, 40, activation="topk", k=4, site="resid_out.0")
    neurons = NeuronBasis(32, site="resid_out.1")
    assert not sae.separable and neurons.separable  # top-k encodes every feature
    experiment = PatchingExperiment(model, {"resid_out.0": sae, "resid_out.1": neurons},
                                    PROMPTS, settings=QUIET)
    width, vocab = experiment.prompts.clean_ids.shape[1], experiment.clean_logits.shape[-1]
    expected = 4 * width * (vocab + 16 * width + (40 + 3 * 7 + 24 * 32)
                            + (5 + 3 * 5 + 24 * 32))
    assert experiment.bytes_per_row({"resid_out.0": 7, "resid_out.1": 5}) == expected


def test_circuit_bytes_per_row_equals_the_formula(model):
    """``FLOAT_BYTES · T · (vocab + 16 T + features + 24 max d_model)`` with three tensors
    of the widest dictionary, or four of every dictionary (``every_site``)."""
    dictionaries = {"resid_out.0": random_sae(32, "resid_out.0", n_features=40),
                    "resid_out.1": random_sae(32, "resid_out.1", n_features=70)}
    runs = CircuitRuns(model, dictionaries, PROMPTS, targets="logit_diff")
    vocab = model_config(model).vocab_size
    base = vocab + 16 * runs.width + 24 * 32
    assert runs.bytes_per_row() == 4 * runs.width * (base + 3 * 70)
    assert runs.bytes_per_row(every_site=True) == 4 * runs.width * (base + 4 * (40 + 70))


def test_bytes_per_row_counts_each_part():
    assert FLOAT_BYTES == 4
    assert bytes_per_row(10, vocab=0, features=[], d_models=[]) == 4 * 10 * 160
    assert bytes_per_row(10, vocab=100, features=[(8, 3), (5, 1)], d_models=[16, 2]) == (
        4 * 10 * (100 + 160 + 24 + 5 + 24 * 18))


# --------------------------------------------------------------------------- tiling
def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_mismatch_check_is_narrow():
    message = ("The size of tensor a (12) must match the size of tensor b (4) at "
               "non-singleton dimension 0")
    assert is_tiling_mismatch(RuntimeError(message), rows=12, batch=4)
    assert is_tiling_mismatch(RuntimeError(message), rows=4, batch=12)   # either operand
    assert not is_tiling_mismatch(RuntimeError(message), rows=12, batch=3)
    assert not is_tiling_mismatch(torch.OutOfMemoryError(message), rows=12, batch=4)
    assert not is_tiling_mismatch(ValueError(message), rows=12, batch=4)
    assert not is_tiling_mismatch(RuntimeError("CUDA error: an illegal memory access"),
                                  rows=12, batch=4)


def test_prefix_tiling_retries_only_the_mismatch(model):
    tiling = PrefixTiling(model)
    assert tiling.possible
    with pytest.raises(torch.OutOfMemoryError):
        tiling.run(_oom, lambda: pytest.fail("retried after OutOfMemoryError"), rows=8, batch=4)
    assert tiling.possible
    with pytest.raises(RuntimeError, match="illegal"):
        tiling.run(lambda: _raise(RuntimeError("illegal memory access")),
                   lambda: pytest.fail("retried after another RuntimeError"), rows=8, batch=4)
    mismatch = RuntimeError("The size of tensor a (8) must match the size of tensor b (4) at "
                            "non-singleton dimension 0")
    assert tiling.run(lambda: _raise(mismatch), lambda: "untiled", rows=8, batch=4) == "untiled"
    assert not tiling.possible
    assert tiling.run(lambda: pytest.fail("tiled again"), lambda: "untiled", rows=8,
                      batch=4) == "untiled"


def _raise(error):
    raise error


def test_eager_attention_is_decided_up_front(tiny_models):
    """Gemma-2 always runs eager attention, which builds a per-batch mask before block 0."""
    # (transformers has no public getter for the attention implementation)
    assert model_config(tiny_models["gemma2"])._attn_implementation == "eager"
    assert not tiling_possible(tiny_models["gemma2"])
    assert tiling_possible(tiny_models["gpt2"]) and tiling_possible(tiny_models["llama"])


def test_patching_out_of_memory_in_the_tiled_pass_propagates(model, monkeypatch):
    experiment = PatchingExperiment(model, random_sae(32, "resid_out.0", 2), PROMPTS,
                                    settings=QUIET)
    tiled, traced = [], []
    run = experiment.tiling.run

    def tiling_run(*args, rows, batch):
        tiled.append((rows, batch))
        return run(*args, rows=rows, batch=batch)

    def trace(model, input_ids):
        traced.append(len(input_ids))
        if len(traced) == 1:
            _oom()
        pytest.fail("the untiled pass ran after an OutOfMemoryError")

    monkeypatch.setattr(experiment.tiling, "run", tiling_run)
    monkeypatch.setattr(experiment_module, "trace", trace)
    with pytest.raises(torch.OutOfMemoryError):
        experiment.patched_logits([[1, 2, 3], [4, 5]])
    # one forward, the tiled one: its batch is the distinct prompts, fewer than its rows
    assert len(tiled) == 1 and traced == [tiled[0][1]] and tiled[0][1] < tiled[0][0]
    assert experiment.forwards_run == 1 and experiment.tiling.possible


def test_circuit_out_of_memory_in_the_tiled_pass_propagates(model, monkeypatch):
    runs = CircuitRuns(model, {"resid_out.0": random_sae(32, "resid_out.0", 2)}, PROMPTS,
                       targets="logit_diff")
    calls = []

    def trace_rows(*args, tile_at=None, **kwargs):
        calls.append(tile_at)
        if tile_at is not None:
            _oom()
        pytest.fail("the untiled pass ran after an OutOfMemoryError")

    monkeypatch.setattr(runs_module, "trace_rows", trace_rows)
    with pytest.raises(torch.OutOfMemoryError):
        runs.trace({"resid_out.0": SiteOps(save_activation=True)}, 3, tile_at="resid_out.0")
    assert calls == ["resid_out.0"] and runs.tiling.possible


@pytest.mark.parametrize("arch", ["gemma2", "gpt2"])
def test_a_real_tiling_mismatch_falls_back_in_both_clients(tiny_models, checkpoint_dirs,
                                                            monkeypatch, arch):
    """Forced to try tiling an eager-attention model at ``resid_out.0`` (one block after it,
    which reads the ``[n, 1, T, T]`` mask), both clients hit the real mismatch, fall back to
    full batches and get the untiled results."""
    from featcircuits import load_model

    model = (tiny_models[arch] if arch == "gemma2"
             else load_model(checkpoint_dirs[arch], attn_implementation="eager"))
    monkeypatch.setattr(tiling_module, "tiling_possible", lambda model: True)
    experiment = PatchingExperiment(model, random_sae(32, "resid_out.0", 9), PROMPTS,
                                    settings=QUIET)
    assert experiment.tiling.possible
    sets = [[1, 5, 9], list(range(30)), [2]]
    batched, _ = experiment.patched_logits(sets)
    assert not experiment.tiling.possible
    for index, feature_set in enumerate(sets):
        single, _ = experiment.patched_logits([feature_set])
        assert (batched[index] - single[0]).abs().max() < 1e-5

    runs = CircuitRuns(model, {"resid_out.0": random_sae(32, "resid_out.0", 9)}, PROMPTS,
                       targets="logit_diff")
    ops = {"resid_out.0": SiteOps(save_activation=True)}
    result = runs.trace(ops, 3, tile_at="resid_out.0")
    assert not runs.tiling.possible
    expected = runs.activations["resid_out.0"].repeat(3, 1, 1)
    assert (result.activations["resid_out.0"] - expected).abs().max() < 1e-5
    assert (result.targets - runs.target_values.repeat(3, 1)).abs().max() < 1e-4

