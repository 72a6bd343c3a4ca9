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
from featcircuits.engine.cache import RunCache
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import ParameterError
from featcircuits.model.sites import Site
from featcircuits.patching.experiment import PatchingExperiment
from featcircuits.patching.search import attribution_curve, backward_elimination, features_needed

METHODS = ("elimination", "attribution")


def reference_bases(model, sites: Sequence[str], *, seed: int = 0
                    ) -> dict[str, dict[str, Dictionary]]:
    """The neuron basis and a seeded random rotation at each site (the baselines), on the
    model's device and dtype (the rotation is drawn on the CPU, so it is the same everywhere)."""
    from featcircuits.model.loading import to_model

    width = {site: Site.parse(site).width(model) for site in sites}
    return {
        "neuron": {site: to_model(NeuronBasis(width[site], site=site), model) for site in sites},
        "random": {site: to_model(RandomBasis(width[site], seed=seed + index, site=site), model)
                   for index, site in enumerate(sites)},
    }


def compare_bases(model, prompts, bases: Mapping[str, Mapping[str, Dictionary]], *,
                  method: str = "elimination", taus: Sequence[float] | None = None,
                  positions: str | Sequence[int] = "all",
                  settings: RunSettings | None = None) -> pd.DataFrame:
    """Patching curves for every (site, basis).

    Args:
        bases: ``{basis name: {site: Dictionary}}``; sites missing from a basis are skipped.
        method: ``"elimination"`` (greedy backward elimination over ``taus``) or
            ``"attribution"`` (attribution-ranked top-k).
        settings: how each experiment runs (``RunSettings``: ``max_rows``, ``max_memory``,
            see ``PatchingExperiment``); ``seed`` also seeds the elimination order and
            ``progress`` shows a bar over (site, basis).

    Returns:
        tidy rows ``basis, site, layer, method, tau, n_features, kl, logit_diff, answer_prob,
        edit_magnitude, features``; plus, per (site, basis), the unpatched point
        (``n_features = 0``) and the clean/corrupt KL baselines in ``kl_corrupt``.
    """
    settings = RunSettings() if settings is None else settings
    if method not in METHODS:
        raise ParameterError(f"unknown method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    sites = sorted({site for basis in bases.values() for site in basis},
                   key=lambda name: Site.parse(name).depth)
    if not sites:
        raise ParameterError("no dictionaries to compare", hint="pass {basis: {site: dictionary}}")
    runs = RunCache(model, prompts, sites, max_memory=settings.max_memory)
    frames = []
    jobs = [(site, name) for site in sites for name in bases if site in bases[name]]
    for site, name in tqdm(jobs, desc="bases", disable=not settings.progress):
        experiment = PatchingExperiment(model, {site: bases[name][site]}, runs.prompts,
                                        positions=positions,
                                        settings=settings.with_(progress=False), runs=runs)
        if method == "elimination":
            curve = backward_elimination(experiment, site, taus=taus, seed=settings.seed,
                                         progress=False)
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


def basis_statistics(dictionary: Dictionary, activations, token_ids=None, *, k: int = 16,
                     top: int = 20) -> dict[str, float]:
    """Describe how a basis carves up activations ``[n, d_model]``.

    Returns:
        ``variance_explained_at_k``: 1 − ‖x − x̂ₖ‖² / ‖x − x̄‖² where x̂ₖ keeps the ``k``
        features with the largest energy E[cᵢ²]·‖fᵢ‖² (plus the decoder bias);
        ``mean_kurtosis``: mean excess kurtosis of the features' activations;
        ``token_purity``: for each feature, the share of its ``top`` highest activations that
        fall on its most common token, averaged over features (needs ``token_ids [n]``);
        ``l0``: mean number of nonzero features per activation.
    """
    import torch

    with torch.no_grad():
        reference = next(iter(dictionary.parameters()), None)
        x = torch.as_tensor(activations, dtype=torch.float32)
        if reference is not None:
            x = x.to(device=reference.device, dtype=reference.dtype)
        codes = dictionary.encode(x)
        energy = codes.pow(2).mean(0) * dictionary.directions.pow(2).sum(1)
        keep = torch.topk(energy, min(k, dictionary.n_features)).indices
        reconstruction = codes[:, keep] @ dictionary.directions[keep] + dictionary.decoder_bias
        total = (x - x.mean(0)).pow(2).sum()
        explained = 1 - (x - reconstruction).pow(2).sum() / total
        centred = codes - codes.mean(0)
        variance = centred.pow(2).mean(0)
        alive = variance > 1e-12
        kurtosis = (centred[:, alive].pow(4).mean(0) / variance[alive].pow(2) - 3).mean()
        purity = float("nan")
        if token_ids is not None:
            tokens = torch.as_tensor(token_ids).reshape(-1)
            n_top = min(top, len(tokens))
            best = torch.topk(codes[:, alive], n_top, dim=0).indices  # [top, alive]
            top_tokens = tokens[best]
            counts = (top_tokens[None, :, :] == top_tokens[:, None, :]).sum(0)  # [top, alive]
            purity = float((counts.max(0).values.float() / n_top).mean())
        l0 = float((codes != 0).float().sum(-1).mean())
    return {"variance_explained_at_k": float(explained), "mean_kurtosis": float(kurtosis),
            "token_purity": purity, "l0": l0}
