"""``patch_features_and_error`` (one encode, one decode) writes what ``patch_site`` followed
by ``patch_error(prior_edit=...)`` writes, and what ``decode(patched c) + patched e`` is."""

from __future__ import annotations

import pytest
import torch

from featcircuits.engine.edits import patch_error, patch_features_and_error, patch_site
from featcircuits.model.sites import Site
from tests.circuits.test_edge_readouts import _dictionaries
from tests.support.factories import random_sae


def _ids():
    return torch.randint(0, 60, (3, 6), generator=torch.Generator().manual_seed(8))


def _masks(kind, n, T, F, generator):
    feature = (torch.rand(n, T, F, generator=generator) > 0.5).float()
    feature = {"1d": feature[0, 0], "2d": feature[:, 0], "3d": feature}[kind]
    positions = (torch.rand(n, T, generator=generator) > 0.3).float()
    error_positions = (torch.rand(n, T, generator=generator) > 0.4).float()
    return feature, positions, torch.tensor([1.0, 0.0, 1.0]), error_positions


@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
@pytest.mark.parametrize("which", ["sae", "transcoder"])
def test_fused_patch_equals_the_two_calls(tiny_models, kind, which):
    model = tiny_models["gpt_neox"]
    if which == "sae":
        site, dictionary = Site.parse("resid_out.0"), random_sae(32, "resid_out.0", seed=2)
    else:
        dictionary = _dictionaries("transcoder")["mlp_out.1"]
        site = Site.parse("mlp_out.1")
    ids = _ids()
    generator = torch.Generator().manual_seed(3)
    n, T, F = ids.shape[0], ids.shape[1], dictionary.n_features
    source = torch.rand(n, T, F, generator=generator)
    source_error = torch.randn(n, T, 32, generator=generator)
    feature_mask, positions, error_mask, error_positions = _masks(kind, n, T, F, generator)
    patch = {"source_features": source, "feature_mask": feature_mask,
             "position_mask": positions}
    patch_err = {"source_error": source_error, "error_mask": error_mask,
                 "position_mask": error_positions}
    with torch.no_grad():
        with model.trace(ids):
            x_in = Site.parse(dictionary.input_site or str(site)).read(model).save()
            before = site.read(model).save()
            read = None if which == "sae" else x_in   # read before the site, in order
            edit = patch_site(model, site, dictionary, **patch, x_in=read)
            patch_error(model, site, dictionary, **patch_err, prior_edit=edit, x_in=read)
            two = site.read(model).save()
        with model.trace(ids):
            read = None if which == "sae" else Site.parse(dictionary.input_site).read(model)
            patch_features_and_error(model, site, dictionary, patch, patch_err, x_in=read)
            fused = site.read(model).save()
    features = dictionary.encode(x_in)
    error = before - dictionary.decode(features)
    full_mask = feature_mask.expand(n, T, F) if kind == "3d" else (
        feature_mask[None, None] if kind == "1d" else feature_mask[:, None]).expand(n, T, F)
    patched = torch.where((full_mask * positions[..., None]).bool(), source, features)
    errors = torch.where((error_mask[:, None] * error_positions)[..., None].bool(),
                         source_error, error)
    expected = dictionary.decode(patched) + errors
    assert float((two - before).abs().max()) > 0.1    # the patch changes the site
    torch.testing.assert_close(two, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
