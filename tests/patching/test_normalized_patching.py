"""Patching an SAE that normalises each input (SAELens' constant_norm_rescale / layer_norm) is
exact: PatchingExperiment and attribution_scores against plain torch forward hooks that apply
SAELens' formula, x′ = x̄ + decode(c, x̄) − decode(c̄, x̄) with
decode(c, x) = s(x)·(c @ W_dec + b_dec) + m(x). Ignoring s(x) misses by far."""

from __future__ import annotations

import pytest
import torch

from featcircuits.dictionaries import NormalizedSparseAutoencoder
from featcircuits.engine.runs import CircuitRuns
from featcircuits.errors import DictionaryError
from featcircuits.model.loading import underlying_module
from featcircuits.patching.experiment import PatchingExperiment
from tests.support.factories import PROMPTS, QUIET

SITE, N = "mlp_out.0", 24


def _sae(norm: str) -> NormalizedSparseAutoencoder:
    torch.manual_seed(7)
    sae = NormalizedSparseAutoencoder(32, N, normalization=norm, site=SITE)
    with torch.no_grad():
        sae.W_dec_untied.mul_(torch.rand(N, 1) + 0.5)  # non-unit rows
        sae.b_enc.uniform_(-0.05, 0.2)
        sae.b_dec.normal_(0, 0.1)
    return sae


@pytest.fixture(scope="module", params=["constant_norm_rescale", "layer_norm"])
def setup(request, tiny_models):
    """(model, SAE, experiment) for one normalisation, shared by the tests below."""
    model, sae = tiny_models["gpt2"], _sae(request.param)
    return model, sae, PatchingExperiment(model, {SITE: sae}, PROMPTS, settings=QUIET)


def _saelens_decode(sae, c: torch.Tensor, x: torch.Tensor, *, scaled: bool = True):
    """SAELens' decode at input x, written out in plain torch (``scaled=False``: the wrong
    fixed-direction decoder)."""
    out = c @ sae.W_dec + sae.b_dec
    if not scaled:
        return out
    if sae.normalization == "constant_norm_rescale":
        return out / (x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True))
    mu = x.mean(-1, keepdim=True)
    return out * (x - mu).std(-1, keepdim=True) + mu


def _mlp(model):
    return underlying_module(model).transformer.h[0].mlp


def _clean(model, prompts) -> torch.Tensor:
    """The clean run's mlp_out.0 ``[n, pos, d]``, plain torch."""
    state = {}
    hook = _mlp(model).register_forward_hook(
        lambda module, args, out: state.__setitem__("clean", out.detach()))
    with torch.no_grad():
        underlying_module(model)(prompts.clean_ids)
    hook.remove()
    return state["clean"]


def _reference(model, sae, prompts, clean, mask, *, scaled=True):
    """Final-position logits ``[n, vocab]`` and edit norms ``[n]`` of patching the clean
    features in ``mask`` into the corrupted run at mlp_out.0, in plain torch."""
    plain = underlying_module(model)
    state = {"clean": clean}
    token_mask = prompts.token_mask.float()[..., None]

    def patch(module, args, out):
        c, c_bar = sae.encode(state["clean"]), sae.encode(out)
        patched = torch.where((mask * token_mask).bool(), c, c_bar)
        state["edit"] = (_saelens_decode(sae, patched, out, scaled=scaled)
                         - _saelens_decode(sae, c_bar, out, scaled=scaled))
        return out + state["edit"]

    hook = _mlp(model).register_forward_hook(patch)
    with torch.no_grad():
        logits = plain(prompts.corrupt_ids).logits
    hook.remove()
    final = prompts.final_positions
    return logits[torch.arange(len(final)), final], state["edit"].pow(2).sum((-1, -2)).sqrt()


@torch.no_grad()
def test_patching_matches_saelens_decode_difference(setup):
    model, sae, experiment = setup
    active = experiment.active_features()
    assert len(active) >= 6
    sets = [active[:3], active]
    logits, norms = experiment.patched_logits([{SITE: ids} for ids in sets])
    clean = _clean(model, experiment.prompts)
    for index, ids in enumerate(sets):
        mask = torch.zeros(N)
        mask[ids] = 1.0
        expected, expected_norms = _reference(model, sae, experiment.prompts, clean, mask)
        assert (logits[index] - expected).abs().max() < 1e-4
        assert (norms[index] - expected_norms).abs().max() < 1e-4
    wrong, _ = _reference(model, sae, experiment.prompts, clean, mask, scaled=False)
    assert (wrong - expected).abs().max() > 1e-2  # sharp: s(x) matters
    assert (logits[1] - experiment.corrupt_logits).abs().max() > 1e-3  # 7.5e-3, 2.9e-2


def test_attribution_scores_carry_the_scale(setup):
    """score_i = Σ (c_i − c̄_i)·s(x̄)·(∂m/∂x̄ · W_dec[i]), the gradient from plain autograd."""
    from featcircuits.patching.search import attribution_scores

    model, sae, experiment = setup
    scores = attribution_scores(experiment, SITE, metric="logit_diff")
    scores = torch.tensor(scores.sort_values("feature")["score"].to_numpy())
    prompts, plain = experiment.prompts, underlying_module(model)
    state = {"clean": _clean(model, prompts)}
    leaf = torch.zeros(*prompts.corrupt_ids.shape, 32, requires_grad=True)

    def add_leaf(module, args, out):
        state["corrupt"] = out.detach()
        return out + leaf

    hook = _mlp(model).register_forward_hook(add_leaf)
    logits = plain(prompts.corrupt_ids).logits
    hook.remove()
    rows = torch.arange(len(prompts.final_positions))
    final = logits[rows, prompts.final_positions]
    (gradient,) = torch.autograd.grad(
        (final[rows, prompts.answer_ids] - final[rows, prompts.wrong_ids]).sum(), leaf)
    with torch.no_grad():
        x_bar = state["corrupt"]
        difference = ((sae.encode(state["clean"]) - sae.encode(x_bar))
                      * prompts.token_mask.float()[..., None])
        if sae.normalization == "constant_norm_rescale":  # s(x̄) by SAELens' formulas
            scale = x_bar.norm(dim=-1, keepdim=True) / 32 ** 0.5
        else:
            scale = (x_bar - x_bar.mean(-1, keepdim=True)).std(-1, keepdim=True)
        along = gradient @ sae.W_dec.T
        expected = (difference * scale * along).sum(dim=(0, 1)) / len(rows)
        unscaled = (difference * along).sum(dim=(0, 1)) / len(rows)
    tolerance = 1e-4 * max(1.0, float(expected.abs().max()))
    assert (scores - expected).abs().max() < tolerance
    assert (unscaled - expected).abs().max() > 100 * tolerance


def test_circuit_runs_refuse_a_decoder_scale(tiny_models):
    with pytest.raises(DictionaryError, match="circuit discovery.*per-input decoder scale"):
        CircuitRuns(tiny_models["gpt2"], {SITE: _sae("layer_norm")}, PROMPTS,
                    targets="logit_diff", settings=QUIET)


def test_decode_refuses_no_input_and_error_is_exact():
    sae = _sae("layer_norm")
    x = torch.randn(3, 5, 32) * 4 + 1
    with torch.no_grad():
        c = sae.encode(x)
        assert torch.allclose(sae.decode(c, x) + sae.error(x), x, atol=1e-5)
        assert torch.allclose(sae.decode(c, x), _saelens_decode(sae, c, x), atol=1e-5)
        assert torch.allclose(sae(x), _saelens_decode(sae, c, x), atol=1e-5)
        ids = torch.tensor([2, 9, 11])
        assert torch.allclose(sae.encode_features(x, ids), c[..., ids], atol=1e-6)
    with pytest.raises(DictionaryError, match="needs the input"):
        sae.decode(c)


def test_basis_statistics_decode_with_the_input_scale():
    """With every feature kept, x̂ₖ is SAELens' full reconstruction (fixed directions would
    explain far less)."""
    from featcircuits.patching.compare import basis_statistics

    sae = _sae("constant_norm_rescale")
    x = torch.randn(200, 32) * (torch.rand(200, 1) * 4 + 1)
    stats = basis_statistics(sae, x, k=N)
    with torch.no_grad():
        c = sae.encode(x)
        total = (x - x.mean(0)).pow(2).sum()
        expected = 1 - (x - _saelens_decode(sae, c, x)).pow(2).sum() / total
        fixed = 1 - (x - _saelens_decode(sae, c, x, scaled=False)).pow(2).sum() / total
    assert abs(stats["variance_explained_at_k"] - float(expected)) < 1e-4
    assert abs(float(fixed) - float(expected)) > 1e-2
