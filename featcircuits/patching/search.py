"""Finding small feature sets that restore clean behaviour.

Two methods, both returning tidy DataFrames (one row per point on the curve):

* ``backward_elimination`` — the seed paper's greedy method. Start with every feature patched;
  for each tau on an ascending log grid, visit the patched features in seeded random order
  and un-patch one if the KL divergence rises by at most tau. The set found for one tau is
  the start for the next, so the curve is monotone in tau.
* ``attribution_curve`` — a fast alternative: rank features by the attribution
  ``(cᵢ − c̄ᵢ) · (∂m/∂x · fᵢ)`` (one backward pass) and patch the top k for a grid of k, all
  k evaluated in batched forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from featcircuits.engine.memory import forward_bytes_per_row
from featcircuits.errors import ParameterError
from featcircuits.graph import check_tau
from featcircuits.model.loading import trace
from featcircuits.model.metrics import kl_divergence, logit_diff
from featcircuits.model.sites import Site
from featcircuits.patching.experiment import PatchingExperiment


def default_taus(n: int = 50, low: float = 1e-5, high: float = 1.0) -> np.ndarray:
    """``n`` log-spaced thresholds from ``low`` to ``high`` (the paper's grid); ``n`` >= 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError(f"the number of thresholds (n_taus) must be an integer >= 1, "
                             f"got {n!r}", hint="e.g. n_taus=16 (the paper used 50)")
    return np.logspace(np.log10(low), np.log10(high), n)


def _check_taus(taus) -> np.ndarray:
    taus = np.asarray(taus, dtype=float).reshape(-1)
    if taus.size == 0:
        raise ParameterError("no thresholds given", hint="pass e.g. default_taus()")
    if np.isnan(taus).any() or (taus < 0).any():
        raise ParameterError(f"thresholds must be >= 0 and not NaN, got {taus[np.isnan(taus) | (taus < 0)][:3].tolist()}")
    return np.sort(taus)


def backward_elimination(experiment: PatchingExperiment, site: str | None = None, *,
                         taus: Sequence[float] | None = None, seed: int = 0,
                         batch_size: int = 32, features: Sequence[int] | None = None,
                         progress: bool = True) -> pd.DataFrame:
    """Greedy backward elimination of patched features (Cunningham et al. 2023).

    Features whose source and corrupted activations never differ are dropped first: patching
    them is a no-op. Candidate removals are evaluated speculatively in batches of
    ``batch_size`` (each candidate against the current set); results up to the first accepted
    removal are exact, later ones are recomputed, so the outcome equals the sequential
    algorithm. ``features`` restricts the starting set (e.g. the top features by
    attribution for a wide dictionary; default: every active feature).

    Returns:
        one row per tau: ``tau, n_features, kl, logit_diff, answer_prob, edit_magnitude,
        features`` (the kept ids, as a list).
    """
    site = experiment._one_site(site)
    taus = _check_taus(default_taus() if taus is None else taus)
    generator = torch.Generator().manual_seed(int(seed))
    kept = experiment.active_features(site)
    if features is not None:
        wanted = set(experiment.dictionaries[site].check_feature_ids(features).tolist())
        kept = [feature for feature in kept if feature in wanted]
    current_kl = float(experiment.mean_kl([{site: kept}])[0])
    rows = []
    for tau in tqdm(taus, desc=f"elimination {site}", disable=not progress, leave=False):
        order = [kept[i] for i in torch.randperm(len(kept), generator=generator,
                                                            device="cpu").tolist()]
        position = 0
        while position < len(order):
            candidates = order[position:position + batch_size]
            kept_set = set(kept)
            trial_sets = [{site: sorted(kept_set - {feature})} for feature in candidates]
            trial_kl = experiment.mean_kl(trial_sets).tolist()
            accepted = next((i for i, kl in enumerate(trial_kl) if kl - current_kl <= tau), None)
            if accepted is None:
                position += len(candidates)
                continue
            kept.remove(candidates[accepted])
            current_kl = trial_kl[accepted]
            position += accepted + 1
        rows.append({"tau": float(tau), "features": sorted(kept)})
    measured = experiment.evaluate([{site: row["features"]} for row in rows])
    frame = pd.concat([pd.DataFrame(rows), measured.drop(columns="set")], axis=1)
    return frame[["tau", "n_features", "kl", "logit_diff", "answer_prob", "edit_magnitude",
                  "features"]]


def attribution_scores(experiment: PatchingExperiment, site: str | None = None, *,
                       metric: str = "kl") -> pd.DataFrame:
    """First-order estimate of each feature's effect when patched alone.

    ``score_i = Σ_{prompts, positions} (sourceᵢ − c̄ᵢ) · s(x̄) · (∂m/∂x̄ · fᵢ)`` with the
    gradient taken on the corrupted run, one backward pass; ``s(x̄)`` is the dictionary's
    ``decoder_scale`` of the corrupted activation (1 for all but an SAE that normalises each
    input), as in the patch itself. For a cross-layer transcoder's layer, whose
    features write several sites, ``∂m/∂x̄ · fᵢ`` is summed over those sites (a backward pass
    each). ``metric`` is ``"kl"`` (KL(clean ‖ run); lower is
    better) or ``"logit_diff"`` (higher is better). ``predicted_gain`` is the score signed so
    that larger means closer to clean behaviour.

    Returns:
        one row per feature: ``feature, score, predicted_gain``, best first.
    """
    site = experiment._one_site(site)
    if metric not in ("kl", "logit_diff"):
        raise ParameterError(f"unknown metric {metric!r}", hint="use 'kl' or 'logit_diff'")
    dictionary = experiment.dictionaries[site]
    # a cross-layer transcoder's features also write later sites: fᵢ there too, the
    # gradient taken at each (one backward pass per written site)
    written = {site: dictionary.directions, **dictionary.later_writes}
    score = torch.zeros(dictionary.n_features, dtype=torch.float64, device=experiment.device)
    gradient, gradient_prompts = None, None
    # the gradient pass keeps every layer's activations of its prompts until the backward
    backward_bytes = forward_bytes_per_row(experiment.model, experiment.prompts.clean_ids.shape[1],
                                           backward=True)
    for prompts, ids in experiment.feature_blocks(site, extra_per_prompt=backward_bytes):
        if gradient is None or prompts != gradient_prompts:
            gradient = {name: _metric_gradient(experiment, name, prompts, metric)
                        for name in written}
            gradient_prompts = prompts
        with torch.no_grad():
            difference = (experiment.source_features.select(site, prompts, ids)
                          - experiment.corrupt_features.select(site, prompts, ids))
            difference = difference * experiment.position_mask[prompts][..., None]
            along = sum(gradient[name] @ (directions if ids is None else directions[ids]).T
                        for name, directions in written.items())  # [p, pos, features]
            scale = dictionary.decoder_scale(  # [p, pos, 1]: the patch's s(x̄), or None
                experiment.runs.corrupt_activations.select(experiment.input_sites[site], prompts))
            if scale is not None:
                along = along * scale.to(along.dtype)
            block = (difference * along).sum(dim=(0, 1)).double()
        score[slice(None) if ids is None else ids] += block
    score = (score / len(experiment.prompts)).float().cpu()
    gain = -score if metric == "kl" else score
    frame = pd.DataFrame({"feature": np.arange(len(score)), "score": score.numpy(),
                          "predicted_gain": gain.numpy()})
    return frame.sort_values("predicted_gain", ascending=False, kind="stable").reset_index(drop=True)


def _metric_gradient(experiment: PatchingExperiment, site: str, prompts: slice,
                     metric: str) -> torch.Tensor:
    """``[p, pos, d_model]`` gradient of the summed metric w.r.t. ``site`` on the corrupted
    run of the prompts ``prompts``."""
    pairs = experiment.prompts
    resolved = Site.parse(site)
    model = experiment.model
    final = pairs.final_positions[prompts]
    gradients: list[torch.Tensor] = []
    with trace(model, pairs.corrupt_ids[prompts]):
        activation = resolved.read(model)
        logits = model.output.logits[torch.arange(len(final), device=final.device), final]
        if metric == "kl":
            value = kl_divergence(experiment.clean_logits[prompts], logits.float()).sum()
        else:
            value = logit_diff(logits.float(), pairs.answer_ids[prompts],
                               pairs.wrong_ids[prompts]).sum()
        with value.backward():
            gradients.append(activation.grad.save())
    return gradients[0].detach()


def size_grid(n_max: int, n_points: int = 24) -> list[int]:
    """0 plus about ``n_points`` log-spaced set sizes from 1 to ``n_max`` (unique ints)."""
    if n_max <= 0:
        return [0]
    sizes = np.unique(np.round(np.logspace(0, np.log10(n_max), n_points)).astype(int))
    return [0, *sizes.tolist()]


def attribution_curve(experiment: PatchingExperiment, site: str | None = None, *,
                      metric: str = "kl", sizes: Sequence[int] | None = None) -> pd.DataFrame:
    """Patch the top-k features by attribution for each k in ``sizes``.

    Only features that differ between source and corrupted run are ranked. Costs the two
    cached runs, one backward pass, and ``len(sizes)`` patched runs batched together.

    Returns:
        one row per k: ``n_features, kl, logit_diff, answer_prob, edit_magnitude, features``.
    """
    site = experiment._one_site(site)
    scores = attribution_scores(experiment, site, metric=metric)
    active = set(experiment.active_features(site))
    ranked = [int(f) for f in scores["feature"] if int(f) in active]
    sizes = size_grid(len(ranked)) if sizes is None else sorted({min(int(k), len(ranked))
                                                                  for k in sizes})
    feature_sets = [{site: ranked[:k]} for k in sizes]
    frame = experiment.evaluate(feature_sets).drop(columns="set")
    frame["features"] = [ranked[:k] for k in sizes]
    return frame[["n_features", "kl", "logit_diff", "answer_prob", "edit_magnitude", "features"]]


def features_needed(curve: pd.DataFrame, threshold_kl: float) -> pd.Series:
    """The first row of ``curve`` (sorted by size) with ``kl <= threshold_kl``.

    Returns that row, or a row of NaNs with ``n_features = NaN`` when no point reaches it.
    """
    threshold_kl = check_tau(threshold_kl, "threshold_kl")
    ordered = curve.sort_values("n_features", kind="stable")
    reached = ordered[ordered["kl"] <= threshold_kl]
    if reached.empty:
        return pd.Series({column: np.nan for column in curve.columns})
    return reached.iloc[0]
