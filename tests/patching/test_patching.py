"""The patch primitive against plain torch hooks; batching; ablation sources; errors."""

from __future__ import annotations

import pytest
import torch

from featcircuits import FeatureIdError, PromptError
from featcircuits.dictionaries import NeuronBasis, PCABasis
from featcircuits.engine.edits import patch_site
from featcircuits.engine.settings import RunSettings
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import Site
from featcircuits.patching.experiment import PatchingExperiment
from tests.support.factories import PROMPTS, QUIET, random_sae
from tests.support.hooks import on_hidden


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt_neox"]


def _manual_patch_logits(model, dictionaries, prompts, masks, positions="all"):
    """Reference: the patch formula applied with plain torch forward hooks, one set at a time."""
    plain = underlying_module(model)
    experiment_prompts = PatchingExperiment(model, dictionaries, prompts, settings=QUIET).prompts
    clean_features = {}
    hooks = []
    captured = {}
    for site in dictionaries:
        module = plain.get_submodule(f"gpt_neox.layers.{Site.parse(site).layer}")
        hooks.append(module.register_forward_hook(on_hidden(
            lambda mod, args, out, site=site: captured.__setitem__(site, out.detach()))))
    with torch.no_grad():
        plain(experiment_prompts.clean_ids)
    for hook in hooks:
        hook.remove()
    for site, dictionary in dictionaries.items():
        clean_features[site] = dictionary.encode(captured[site])
    token_mask = experiment_prompts.token_mask.float()
    if positions == "final":
        token_mask = torch.zeros_like(token_mask)
        token_mask[torch.arange(len(token_mask)), experiment_prompts.final_positions] = 1
    hooks = []
    for site, dictionary in dictionaries.items():
        def hook(mod, args, out, site=site, dictionary=dictionary):
            corrupt_features = dictionary.encode(out)
            weight = (clean_features[site] - corrupt_features) * masks[site] * token_mask[..., None]
            return out + weight @ dictionary.directions
        module = plain.get_submodule(f"gpt_neox.layers.{Site.parse(site).layer}")
        hooks.append(module.register_forward_hook(on_hidden(hook)))
    with torch.no_grad():
        logits = plain(experiment_prompts.corrupt_ids).logits
    for hook in hooks:
        hook.remove()
    final = experiment_prompts.final_positions
    return logits[torch.arange(len(final)), final]


@pytest.mark.parametrize("positions", ["all", "final"])
def test_patch_matches_manual_torch_hooks(model, positions):
    sae = random_sae(32, "resid_out.0")
    dictionaries = {"resid_out.0": sae}
    experiment = PatchingExperiment(model, dictionaries, PROMPTS, positions=positions,
                                    settings=QUIET)
    active = experiment.active_features()
    assert len(active) > 5
    for feature_ids in ([active[0]], active[:7], list(range(sae.n_features))):
        mask = torch.zeros(sae.n_features)
        mask[feature_ids] = 1
        expected = _manual_patch_logits(model, dictionaries, PROMPTS, {"resid_out.0": mask},
                                        positions)
        logits, _ = experiment.patched_logits([feature_ids])
        assert (logits[0] - expected).abs().max() < 1e-5
        assert (logits[0] - experiment.corrupt_logits).abs().max() > 1e-4


def test_two_sites_at_once_match_manual_hooks(model):
    dictionaries = {"resid_out.0": random_sae(32, "resid_out.0", 1),
                    "resid_out.1": random_sae(32, "resid_out.1", 2)}
    experiment = PatchingExperiment(model, dictionaries, PROMPTS, settings=QUIET)
    feature_set = {"resid_out.0": experiment.active_features
                   and [0, 3, 5, 9, 20], "resid_out.1": [1, 2, 40, 77]}
    masks = {site: torch.zeros(96) for site in dictionaries}
    for site, ids in feature_set.items():
        masks[site][ids] = 1
    expected = _manual_patch_logits(model, dictionaries, PROMPTS, masks)
    logits, _ = experiment.patched_logits([feature_set])
    assert (logits[0] - expected).abs().max() < 1e-5


def test_empty_set_reproduces_corrupt_run(model):
    experiment = PatchingExperiment(model, random_sae(32, "resid_out.1"), PROMPTS, settings=QUIET)
    logits, norms = experiment.patched_logits([[]])
    # bitwise by construction: a row with nothing to patch takes the cached corrupted
    # logits (the same tensor) and runs no forward
    assert experiment.forwards_run == 0
    assert torch.equal(logits[0], experiment.corrupt_logits)
    assert norms.abs().max() == 0
    result = experiment.evaluate([[]])
    corrupt_kl = experiment.baselines().set_index("run").loc["corrupt", "kl"]
    assert result.loc[0, "kl"] == pytest.approx(corrupt_kl, abs=1e-6)


def test_patch_site_with_empty_mask_leaves_the_trace_unchanged(model):
    """The primitive itself (not the experiment's no-op shortcut) on an empty feature set."""
    sae = random_sae(32, "resid_out.1")
    experiment = PatchingExperiment(model, sae, PROMPTS, settings=QUIET)
    prompts = experiment.prompts
    final = prompts.final_positions
    with model.trace(prompts.corrupt_ids):
        edit = patch_site(model, "resid_out.1", sae, experiment.clean_features["resid_out.1"],
                          torch.zeros(sae.n_features)).save()
        logits = model.output.logits[torch.arange(len(final)), final].save()
    assert edit.abs().max() == 0
    assert (logits - experiment.corrupt_logits).abs().max() < 1e-5


def test_leave_one_out_sets_share_rows_and_match_manual_hooks(model):
    """Rows reduced to the features that change on their prompt give the same logits as the
    patch formula with plain hooks, and identical reduced rows run only once."""
    site = "resid_out.0"
    sae = random_sae(32, site, seed=5)
    with torch.no_grad():
        sae.b_enc.fill_(-0.08)  # sparse: each prompt changes only some features
    experiment = PatchingExperiment(model, sae, PROMPTS, settings=QUIET)
    # [n, n_features]: the source (clean) value differs from the corrupted one at some
    # patched position of the prompt, i.e. patching the feature there is not a no-op
    difference = (experiment.clean_features[site] - experiment.corrupt_features[site]).abs()
    changes = (difference * experiment.position_mask[..., None]).amax(dim=1) > 0
    active = experiment.active_features()
    assert active == torch.nonzero(changes.any(0)).flatten().tolist()
    assert 5 < len(active) and bool((~changes[:, active]).any())
    sets = [[feature for feature in active if feature != left_out] for left_out in active]
    assert experiment.rows_run == 0
    logits, _ = experiment.patched_logits(sets)
    n = len(PROMPTS)
    # one row per prompt for "everything that changes" plus one per (prompt, changed feature)
    expected_rows = n + int(changes[:, active].sum())
    assert experiment.rows_run == expected_rows < len(sets) * n
    for index in (0, len(sets) // 2, len(sets) - 1):
        mask = torch.zeros(sae.n_features)
        mask[sets[index]] = 1
        expected = _manual_patch_logits(model, {site: sae}, PROMPTS, {site: mask})
        assert (logits[index] - expected).abs().max() < 1e-5


def test_neuron_basis_all_features_restores_clean_site(model):
    site = "resid_out.0"
    experiment = PatchingExperiment(model, NeuronBasis(32, site=site), PROMPTS, settings=QUIET)
    logits, _ = experiment.patched_logits([experiment.all_features()])
    # patching the whole (complete) basis at every position turns the corrupted run into the
    # clean one from this site on, so the answer logits equal the clean logits
    assert (logits[0] - experiment.clean_logits).abs().max() < 1e-4
    result = experiment.evaluate([experiment.all_features()])
    assert result.loc[0, "kl"] < 1e-6
    assert experiment.baselines().set_index("run").loc["corrupt", "kl"] > 1e-5


def test_batched_equals_separate(model):
    # 2 sets per forward: several chunks
    experiment = PatchingExperiment(model, random_sae(32, "resid_out.1", 3), PROMPTS,
                                    settings=RunSettings(max_rows=8, progress=False))
    generator = torch.Generator().manual_seed(0)
    sets = [torch.randperm(96, generator=generator)[: int(size)].tolist()
            for size in torch.randint(0, 60, (7,), generator=generator)]
    batched, batched_norms = experiment.patched_logits(sets)
    for index, feature_set in enumerate(sets):
        single, single_norms = experiment.patched_logits([feature_set])
        assert (batched[index] - single[0]).abs().max() < 1e-5
        assert (batched_norms[index] - single_norms[0]).abs().max() < 1e-5


def test_edit_magnitude_is_norm_of_difference(model):
    experiment = PatchingExperiment(model, NeuronBasis(32, site="resid_out.0"), PROMPTS,
                                    settings=QUIET)
    _, norms = experiment.patched_logits([experiment.all_features()])
    clean = experiment.clean_features["resid_out.0"]
    corrupt = experiment.corrupt_features["resid_out.0"]
    expected = ((clean - corrupt) * experiment.position_mask[..., None]).pow(2).sum((1, 2)).sqrt()
    torch.testing.assert_close(norms[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["zero", "mean", "resample"])
def test_ablation_sources(model, source):
    pca = PCABasis.fit(torch.randn(200, 32), site="resid_out.0")
    experiment = PatchingExperiment(model, pca, PROMPTS, source=source, settings=QUIET)
    clean = experiment.clean_features["resid_out.0"]
    if source == "zero":
        assert experiment.source_features["resid_out.0"].abs().max() == 0
    elif source == "mean":
        mean = clean[experiment.prompts.token_mask].mean(0)
        torch.testing.assert_close(experiment.source_features["resid_out.0"][1, 2], mean)
    else:
        resampled = experiment.source_features["resid_out.0"]
        lengths = experiment.prompts.lengths
        # prompts 0 and 2 are the only pair with equal length (6 tokens): swapped
        assert lengths[0] == lengths[2] and torch.equal(resampled[0], clean[2])
        assert torch.equal(resampled[2], clean[0])
    logits, _ = experiment.patched_logits([experiment.all_features()])
    assert torch.isfinite(logits).all()


def test_errors_name_the_bad_value(model):
    sae = random_sae(32, "resid_out.0")
    experiment = PatchingExperiment(model, sae, PROMPTS, settings=QUIET)
    with pytest.raises(FeatureIdError, match="96"):
        experiment.evaluate([[1, 96]])
    with pytest.raises(FeatureIdError, match="more than once"):
        experiment.evaluate([[4, 4]])
    bad_length = PROMPTS.copy()
    bad_length.loc[2, "corrupt"] = "w10 w11 w22 w13"
    with pytest.raises(PromptError, match=r"row 2.*5 vs 4"):
        PatchingExperiment(model, sae, bad_length, settings=QUIET)
    bad_answer = PROMPTS.copy()
    bad_answer.loc[1, "answer"] = "w1 w2"
    with pytest.raises(PromptError, match=r"row 1: answer 'w1 w2' is 2 tokens"):
        PatchingExperiment(model, sae, bad_answer, settings=QUIET)
    with pytest.raises(PromptError, match="no prompt pairs"):
        PatchingExperiment(model, sae, PROMPTS.iloc[:0], settings=QUIET)


# ------------------------------------------------------------------------------ search
from featcircuits import ParameterError
from featcircuits.patching.search import (
    attribution_curve,
    attribution_scores,
    backward_elimination,
    features_needed,
)


def _sequential_elimination(experiment, site, taus, seed):
    """Plain sequential reference implementation of the greedy loop."""
    generator = torch.Generator().manual_seed(seed)
    kept = experiment.active_features(site)
    current = float(experiment.mean_kl([{site: kept}])[0])
    result = []
    for tau in sorted(taus):
        order = [kept[i] for i in torch.randperm(len(kept), generator=generator).tolist()]
        for feature in order:
            trial = sorted(set(kept) - {feature})
            kl = float(experiment.mean_kl([{site: trial}])[0])
            if kl - current <= tau:
                kept, current = trial, kl
        result.append(sorted(kept))
    return result


def test_backward_elimination_matches_sequential_and_is_seeded(model):
    experiment = PatchingExperiment(model, random_sae(32, "resid_out.0", 5, 20), PROMPTS,
                                    settings=QUIET)
    taus = [1e-6, 1e-5, 1e-4]
    frame = backward_elimination(experiment, taus=taus, seed=3, batch_size=8, progress=False)
    reference = _sequential_elimination(experiment, "resid_out.0", taus, 3)
    assert [list(f) for f in frame["features"]] == reference
    again = backward_elimination(experiment, taus=taus, seed=3, batch_size=5, progress=False)
    assert [list(f) for f in again["features"]] == reference
    assert (frame["n_features"].diff().dropna() <= 0).all()


def test_backward_elimination_extremes(model):
    experiment = PatchingExperiment(model, random_sae(32, "resid_out.0", 6, 20), PROMPTS,
                                    settings=QUIET)
    active = experiment.active_features()
    frame = backward_elimination(experiment, taus=[0.0, float("inf")], progress=False)
    kept_at_zero = frame.loc[0, "features"]
    full_kl = float(experiment.mean_kl([active])[0])
    # at tau = 0 no removal may raise KL, so the kept set is at least as good as all features
    assert frame.loc[0, "kl"] <= full_kl + 1e-9
    # features that matter a lot (removal raises KL by > 10% of the total) are kept
    rises = experiment.mean_kl([sorted(set(active) - {f}) for f in active]) - full_kl
    important = [f for f, rise in zip(active, rises.tolist()) if rise > 0.1 * full_kl]
    assert important and set(important) <= set(kept_at_zero)
    # at tau = inf none is kept
    assert frame.loc[1, "n_features"] == 0
    with pytest.raises(ParameterError):
        backward_elimination(experiment, taus=[float("nan")], progress=False)
    with pytest.raises(ParameterError):
        backward_elimination(experiment, taus=[-1.0], progress=False)


def test_attribution_scores_match_finite_differences_for_linear_metric(model):
    experiment = PatchingExperiment(model, random_sae(32, "resid_out.1", 7), PROMPTS,
                                    settings=QUIET)
    scores = attribution_scores(experiment, metric="logit_diff").set_index("feature")
    base = experiment.evaluate([[]]).loc[0, "logit_diff"]
    top = scores.index[:3].tolist()
    for feature in top:
        # scale the patch down so the first-order estimate is accurate
        source = experiment.source_features["resid_out.1"]
        corrupt = experiment.corrupt_features["resid_out.1"]
        epsilon = 1e-2
        experiment.source_features["resid_out.1"] = corrupt + epsilon * (source - corrupt)
        try:
            patched = experiment.evaluate([[feature]]).loc[0, "logit_diff"]
        finally:
            experiment.source_features["resid_out.1"] = source
        estimate = epsilon * scores.loc[feature, "score"]
        assert patched - base == pytest.approx(estimate, rel=0.05, abs=1e-6)


def test_attribution_curve_reaches_clean_with_complete_basis(model):
    experiment = PatchingExperiment(model, NeuronBasis(32, site="resid_out.0"), PROMPTS,
                                    settings=QUIET)
    curve = attribution_curve(experiment)
    assert curve["n_features"].iloc[0] == 0 and curve["n_features"].iloc[-1] == 32
    assert curve["kl"].iloc[-1] < 1e-6
    assert curve["kl"].iloc[0] == pytest.approx(experiment.baselines()["kl"].iloc[1], abs=1e-7)
    point = features_needed(curve, 0.1 * curve["kl"].iloc[0])
    assert 0 < point["n_features"] <= 32


def test_patch_site_with_empty_mask_leaves_logits_unchanged(model):
    """The primitive itself (not the experiment's shortcut for empty sets) is a no-op."""
    from featcircuits.engine import patch_site

    sae = random_sae(32, "resid_out.1", 8)
    experiment = PatchingExperiment(model, sae, PROMPTS, settings=QUIET)
    ids = experiment.prompts.corrupt_ids
    with torch.no_grad():
        reference = underlying_module(model)(ids).logits
        with model.trace(ids):
            edit = patch_site(model, "resid_out.1", sae,
                              experiment.clean_features["resid_out.1"],
                              torch.zeros(len(ids), sae.n_features)).save()
            logits = model.output.logits.save()
    assert edit.abs().max() == 0
    assert (logits - reference).abs().max() < 1e-6


@pytest.mark.parametrize("site", ["resid_out.0", "resid_out.1"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_tiled_batches_equal_separate_runs_on_every_architecture(tiny_models, arch, site):
    """Sets are tiled at the first patched site (earlier layers run once); where an
    architecture builds per-batch tensors before block 0 (Gemma-2's eager attention masks)
    full batches run instead (``engine.tiling``). Either way a batch equals one-set runs."""
    model = tiny_models[arch]
    experiment = PatchingExperiment(model, random_sae(32, site, 9), PROMPTS, settings=QUIET)
    assert experiment.tiling.possible == (arch != "gemma2")
    sets = [[1, 5, 9], list(range(30)), [2]]
    batched, _ = experiment.patched_logits(sets)
    for index, feature_set in enumerate(sets):
        single, _ = experiment.patched_logits([feature_set])
        assert (batched[index] - single[0]).abs().max() < 1e-5
