"""Patching a cross-layer transcoder feature edits every site it writes: with Δc = c − c̄
read at its input site (mlp_in.L), x′ = x̄ + Δc · W_dec[L → L′] at each mlp_out.L′ ≥ L, the
reconstruction error at each output site kept. Checked against plain torch forward hooks on
the Hugging Face GPT-2 MLPs, and against the wrong reading (only the first site edited)."""

from __future__ import annotations

import pytest
import torch

from featcircuits.engine.edits import patch_site
from featcircuits.errors import ParameterError
from featcircuits.model.loading import trace, underlying_module
from featcircuits.patching.experiment import PatchingExperiment
from tests.support.factories import PROMPTS, QUIET, random_cross_layer_transcoder


@pytest.fixture(scope="module")
def setup(tiny_models):
    model = tiny_models["gpt2"]
    clt = random_cross_layer_transcoder(seed=4)
    dictionaries = clt.dictionaries()
    return model, clt, dictionaries, PatchingExperiment(model, dictionaries, PROMPTS,
                                                        settings=QUIET)


def _reference(model, clt, prompts, masks, *, first_site_only=False):
    """Plain torch: clean features at each MLP input, then the corrupt run with every
    layer's Δc (masked, real tokens) decoded into its own and every later MLP output.
    Returns final-position logits ``[n, vocab]`` and edit norms ``[n]``."""
    plain = underlying_module(model)
    mlps = [plain.transformer.h[layer].mlp for layer in range(clt.n_layers)]
    clean_inputs = {}

    def grab(layer):
        return lambda module, args, out: clean_inputs.__setitem__(layer, args[0].detach())

    hooks = [mlp.register_forward_hook(grab(layer)) for layer, mlp in enumerate(mlps)]
    with torch.no_grad():
        plain(prompts.clean_ids)
    for hook in hooks:
        hook.remove()
    token_mask = prompts.token_mask.float()[..., None]
    deltas, edits = {}, {}

    def patch(layer):
        def hook(module, args, out):
            view = clt.layers[layer]
            deltas[layer] = ((view.encode(clean_inputs[layer]) - view.encode(args[0]))
                             * masks.get(layer, 0.0) * token_mask)
            edit = torch.zeros_like(out)
            for read in range(layer + 1):
                if first_site_only and read != layer:
                    continue
                edit = edit + clt.layers[read].decode_at(deltas[read], f"mlp_out.{layer}")
            edits[layer] = edit
            return out + edit
        return hook

    hooks = [mlp.register_forward_hook(patch(layer)) for layer, mlp in enumerate(mlps)]
    with torch.no_grad():
        logits = plain(prompts.corrupt_ids).logits
    for hook in hooks:
        hook.remove()
    final = prompts.final_positions
    norms = torch.stack([e.pow(2).sum(dim=(-1, -2)) for e in edits.values()]).sum(0).sqrt()
    return logits[torch.arange(len(final)), final], norms


def _mask(n_features, ids):
    mask = torch.zeros(n_features)
    mask[ids] = 1.0
    return mask


@torch.no_grad()
def test_patching_a_layer0_feature_edits_both_output_sites(setup):
    model, clt, _, experiment = setup
    active = experiment.active_features("mlp_out.0")
    assert len(active) >= 4
    ids = active[:4]
    sets = [{"mlp_out.0": ids}, {"mlp_out.0": ids[:2], "mlp_out.1": [0, 1, 2, 3, 5]}]
    logits, norms = experiment.patched_logits(sets)
    for index, feature_set in enumerate(sets):
        masks = {int(site[-1]): _mask(20, ids_) for site, ids_ in feature_set.items()}
        expected, expected_norms = _reference(model, clt, experiment.prompts, masks)
        wrong, _ = _reference(model, clt, experiment.prompts, masks, first_site_only=True)
        assert (logits[index] - expected).abs().max() < 1e-4
        assert (norms[index] - expected_norms).abs().max() < 1e-4
        # the test is sharp: editing only the first site misses by far
        assert (wrong - expected).abs().max() > 1e-2
    assert (logits[0] - experiment.corrupt_logits).abs().max() > 1e-2


@torch.no_grad()
def test_one_layer_alone_still_writes_every_later_site(setup):
    """Only layer 0's dictionary in the experiment: its edit at mlp_out.1 is still made."""
    model, clt, dictionaries, shared = setup
    experiment = PatchingExperiment(model, {"mlp_out.0": dictionaries["mlp_out.0"]}, PROMPTS,
                                    source="zero", settings=QUIET, runs=shared.runs)
    ids = experiment.active_features()[:5]
    logits, _ = experiment.patched_logits([ids])
    # zero ablation: c = 0, i.e. Δc = −c̄ at the masked features
    plain = underlying_module(model)
    token_mask = experiment.prompts.token_mask.float()[..., None]
    mask = _mask(20, ids)
    view = clt.layers[0]
    state = {}

    def at0(module, args, out):
        state["delta"] = -view.encode(args[0]) * mask * token_mask
        return out + view.decode_at(state["delta"], "mlp_out.0")

    def at1(module, args, out):
        return out + view.decode_at(state["delta"], "mlp_out.1")

    hooks = [plain.transformer.h[0].mlp.register_forward_hook(at0),
             plain.transformer.h[1].mlp.register_forward_hook(at1)]
    try:
        full = plain(experiment.prompts.corrupt_ids).logits
    finally:
        for hook in hooks:
            hook.remove()
    final = experiment.prompts.final_positions
    expected = full[torch.arange(len(final)), final]
    assert (logits[0] - expected).abs().max() < 1e-4


def test_patch_site_refuses_a_cross_layer_layer_without_carry(setup):
    model, _, dictionaries, _ = setup
    ids = torch.zeros(1, 3, dtype=torch.long)
    with (pytest.raises(ParameterError, match="also writes.*mlp_out.1"), torch.no_grad(),
          trace(model, ids)):
        patch_site(model, "mlp_out.0", dictionaries["mlp_out.0"], torch.zeros(20),
                   torch.ones(20))


def test_attribution_scores_sum_over_every_written_site(setup):
    """score_i = Σ (c_i − c̄_i) Σ_S ∂m/∂x_S · f_i^S, the gradients from plain torch autograd on
    the corrupted run (leaves added at both MLP outputs)."""
    from featcircuits.patching.search import attribution_scores

    model, clt, _, experiment = setup
    scores = attribution_scores(experiment, "mlp_out.0", metric="logit_diff")
    scores = torch.tensor(scores.sort_values("feature")["score"].to_numpy())
    prompts = experiment.prompts
    plain = underlying_module(model)
    clean = {}
    grab = plain.transformer.h[0].mlp.register_forward_hook(
        lambda module, args, out: clean.__setitem__("x_in", args[0].detach()))
    with torch.no_grad():
        plain(prompts.clean_ids)
    grab.remove()
    leaves = [torch.zeros(*prompts.corrupt_ids.shape, 32, requires_grad=True) for _ in range(2)]
    corrupt = {}

    def add_leaf(layer):
        def hook(module, args, out):
            if layer == 0:
                corrupt["x_in"] = args[0].detach()
            return out + leaves[layer]
        return hook

    hooks = [plain.transformer.h[layer].mlp.register_forward_hook(add_leaf(layer))
             for layer in range(2)]
    logits = plain(prompts.corrupt_ids).logits
    for hook in hooks:
        hook.remove()
    rows = torch.arange(len(prompts.final_positions))
    final = logits[rows, prompts.final_positions]
    metric = (final[rows, prompts.answer_ids] - final[rows, prompts.wrong_ids]).sum()
    gradients = torch.autograd.grad(metric, leaves)
    view = clt.layers[0]
    with torch.no_grad():
        difference = ((view.encode(clean["x_in"]) - view.encode(corrupt["x_in"]))
                      * prompts.token_mask.float()[..., None])
        along = [gradients[out] @ view.W_dec[:, out].T for out in range(2)]
        expected = (difference * (along[0] + along[1])).sum(dim=(0, 1)) / len(rows)
        first_only = (difference * along[0]).sum(dim=(0, 1)) / len(rows)
    assert (scores - expected).abs().max() < 1e-4 * max(1.0, float(expected.abs().max()))
    assert (first_only - expected).abs().max() > 1e-2  # sharp: the later site matters
