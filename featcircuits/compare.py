"""Comparing bases (SAEs, PCA, ICA, neurons, random) by how few features restore behaviour.

For each site and basis, a patching curve (KL vs number of patched features, with the edit
magnitude at each point) is measured on the same cached clean/corrupted runs, so bases are
compared on identical footing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.bases import NeuronBasis, RandomBasis
from featcircuits.errors import ParameterError
from featcircuits.patching import PatchingExperiment, RunCache
from featcircuits.search import attribution_curve, backward_elimination, features_needed
from featcircuits.sites import Site, d_model

METHODS = ("elimination", "attribution")


def reference_bases(model, sites: Sequence[str], *, seed: int = 0
                    ) -> dict[str, dict[str, Dictionary]]:
    """The neuron basis and a seeded random rotation at each site (the baselines)."""
    width = d_model(model)
    return {
        "neuron": {site: NeuronBasis(width, site=site) for site in sites},
        "random": {site: RandomBasis(width, seed=seed + index, site=site)
                   for index, site in enumerate(sites)},
    }


def compare_bases(model, prompts, bases: Mapping[str, Mapping[str, Dictionary]], *,
                  method: str = "elimination", taus: Sequence[float] | None = None,
                  positions: str | Sequence[int] = "all", seed: int = 0,
                  max_rows: int = 1024, progress: bool = True) -> pd.DataFrame:
    """Patching curves for every (site, basis).

    Args:
        bases: ``{basis name: {site: Dictionary}}``; sites missing from a basis are skipped.
        method: ``"elimination"`` (greedy backward elimination over ``taus``) or
            ``"attribution"`` (attribution-ranked top-k).

    Returns:
        tidy rows ``basis, site, layer, method, tau, n_features, kl, logit_diff, answer_prob,
        edit_magnitude, features``; plus, per (site, basis), the unpatched point
        (``n_features = 0``) and the clean/corrupt KL baselines in ``kl_corrupt``.
    """
    if method not in METHODS:
        raise ParameterError(f"unknown method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    sites = sorted({site for basis in bases.values() for site in basis},
                   key=lambda name: Site.parse(name).depth)
    if not sites:
        raise ParameterError("no dictionaries to compare", hint="pass {basis: {site: dictionary}}")
    runs = RunCache(model, prompts, sites)
    frames = []
    jobs = [(site, name) for site in sites for name in bases if site in bases[name]]
    for site, name in tqdm(jobs, desc="bases", disable=not progress):
        experiment = PatchingExperiment(model, {site: bases[name][site]}, runs.prompts,
                                        positions=positions, max_rows=max_rows, seed=seed,
                                        progress=False, runs=runs)
        if method == "elimination":
            curve = backward_elimination(experiment, site, taus=taus, seed=seed, progress=False)
            start = experiment.evaluate([experiment.active_features(site)]).drop(columns="set")
            start["tau"] = float("nan")
            start["features"] = [experiment.active_features(site)]
            empty = experiment.evaluate([[]]).drop(columns="set")
            empty["tau"] = float("nan")
            empty["features"] = [[]]
            curve = pd.concat([start, curve, empty], ignore_index=True)
        else:
            curve = attribution_curve(experiment, site)
            curve["tau"] = float("nan")
        baselines = experiment.baselines().set_index("run")
        curve.insert(0, "basis", name)
        curve.insert(1, "site", site)
        curve.insert(2, "layer", Site.parse(site).layer)
        curve.insert(3, "method", method)
        curve["kl_corrupt"] = float(baselines.loc["corrupt", "kl"])
        curve["logit_diff_clean"] = float(baselines.loc["clean", "logit_diff"])
        curve["logit_diff_corrupt"] = float(baselines.loc["corrupt", "logit_diff"])
        frames.append(curve)
    return pd.concat(frames, ignore_index=True)


def summarize_comparison(results: pd.DataFrame, *, fraction: float = 0.1) -> pd.DataFrame:
    """Per (site, basis): the fewest features bringing KL under ``fraction`` × unpatched KL,
    with the edit magnitude and logit difference at that point."""
    if not 0 < fraction < 1:
        raise ParameterError(f"fraction must be in (0, 1), got {fraction}")
    rows = []
    for (site, basis), curve in results.groupby(["site", "basis"], sort=False):
        threshold = fraction * float(curve["kl_corrupt"].iloc[0])
        point = features_needed(curve, threshold)
        rows.append({"site": site, "basis": basis,
                     "features_needed": point["n_features"],
                     "edit_magnitude": point["edit_magnitude"],
                     "kl": point["kl"], "logit_diff": point["logit_diff"],
                     "kl_corrupt": float(curve["kl_corrupt"].iloc[0])})
    return pd.DataFrame(rows)
