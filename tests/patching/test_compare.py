"""Basis comparison on shared cached runs, and the IOI example end to end on a tiny model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from featcircuits import PatchingExperiment, compare_bases, save_dictionary
from featcircuits.dictionaries import NeuronBasis, PCABasis
from featcircuits.engine import RunCache
from featcircuits.engine.settings import RunSettings
from featcircuits.experiments.ioi import run_ioi_patching
from featcircuits.patching import reference_bases, summarize_comparison
from tests.support.factories import PROMPTS, QUIET, random_sae


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt_neox"]


def test_shared_run_cache_gives_identical_results(model):
    sae = random_sae(32, "resid_out.1", 4)
    runs = RunCache(model, PROMPTS, ["resid_out.0", "resid_out.1"])
    shared = PatchingExperiment(model, sae, PROMPTS, runs=runs, settings=QUIET)
    alone = PatchingExperiment(model, sae, PROMPTS, settings=QUIET)
    sets = [[1, 2, 3], list(range(40))]
    torch.testing.assert_close(shared.patched_logits(sets)[0], alone.patched_logits(sets)[0],
                               atol=0, rtol=0)


def test_compare_bases_tidy_rows_and_summary(model):
    sites = ["resid_out.0", "resid_out.1"]
    bases = {"sae": {site: random_sae(32, site, i, 16) for i, site in enumerate(sites)},
             **reference_bases(model, sites)}
    bases["random"] = {"resid_out.1": bases["random"]["resid_out.1"]}
    results = compare_bases(model, PROMPTS, bases, taus=[1e-2], settings=QUIET)
    assert set(results["basis"]) == {"sae", "neuron", "random"}
    assert set(results["site"]) == set(sites)
    # per (site, basis): start (all active), 1 tau, end (empty set)
    assert results.groupby(["site", "basis"]).size().eq(3).all()
    neuron = results[(results.basis == "neuron") & (results.site == "resid_out.0")]
    assert neuron["n_features"].iloc[0] == 32 and neuron["kl"].iloc[0] < 1e-6
    assert neuron["kl"].iloc[-1] == pytest.approx(neuron["kl_corrupt"].iloc[0], abs=1e-7)
    summary = summarize_comparison(results)
    assert len(summary) == 5
    assert (summary["features_needed"].dropna() <= 32).all()
    attribution = compare_bases(model, PROMPTS, {"pca": {"resid_out.0": PCABasis.fit(
        torch.randn(300, 32), site="resid_out.0")}}, method="attribution", settings=QUIET)
    assert attribution["n_features"].iloc[0] == 0 and attribution["kl"].iloc[-1] < 1e-6


def test_ioi_example_end_to_end(tmp_path, checkpoint_dirs):
    sets = tmp_path / "dictionaries"
    for layer in range(2):
        site = f"resid_out.{layer}"
        save_dictionary(random_sae(32, site, layer), sets / "sae" / site)
        save_dictionary(NeuronBasis(32, site=site), sets / "copy-of-neurons" / site)
    prompts = tmp_path / "prompts.csv"
    PROMPTS.to_csv(prompts, index=False)
    result = run_ioi_patching(checkpoint_dirs["gpt_neox"], dictionaries=sets, prompts=prompts,
                              out=tmp_path / "out", settings=RunSettings(progress=False))
    results = result.results
    assert result.paths == {"results": tmp_path / "out" / "results.csv",
                            "curves": tmp_path / "out" / "curves.png"}
    written = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(written) == len(results)
    assert set(written["basis"]) == {"sae", "copy-of-neurons", "neuron", "random"}
    assert set(written["site"]) == {"resid_out.0", "resid_out.1"}
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000
    # the saved neuron basis and the built-in one are the same basis: identical curves
    saved = written[written.basis == "copy-of-neurons"].reset_index(drop=True)
    built = written[written.basis == "neuron"].reset_index(drop=True)
    pd.testing.assert_series_equal(saved["n_features"], built["n_features"])
    # (each basis is its own computation: equal up to float32 rounding, not bitwise)
    pd.testing.assert_series_equal(saved["kl"], built["kl"], check_exact=False, rtol=1e-5,
                                   atol=1e-7)
