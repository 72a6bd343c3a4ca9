"""Factories shared by several test modules: prompt pairs, quiet run settings, seeded SAEs.

Test modules import from here, never from one another.
"""

from __future__ import annotations

import pandas as pd
import torch

from featcircuits.dictionaries import SparseAutoencoder
from featcircuits.engine.settings import RunSettings

QUIET = RunSettings(progress=False)
"""Run settings without progress bars."""

PROMPTS = pd.DataFrame({
    "clean": ["w1 w2 w3 w4 w5", "w6 w7 w8 w9", "w10 w11 w12 w13 w14", "w3 w3 w2 w1"],
    "corrupt": ["w1 w20 w3 w4 w5", "w6 w21 w8 w9", "w10 w11 w22 w13 w14", "w3 w4 w2 w1"],
    "answer": ["w30", "w31", "w32", "w33"],
    "wrong_answer": ["w40", "w41", "w42", "w43"],
})
"""Four prompt pairs of the tiny test vocabulary (corrupt differs in one token)."""

RANDOM_SITES = ("resid_out.0", "mlp_out.1", "resid_out.1")


def random_sae(width: int, site: str, seed: int = 0, n_features: int | None = None
               ) -> SparseAutoencoder:
    """A seeded random SAE (``width`` → ``n_features``, default ``3 * width``) at ``site``,
    biases set so that features fire."""
    torch.manual_seed(seed)
    sae = SparseAutoencoder(width, n_features or 3 * width, site=site)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.05, 0.2)
        sae.b_dec.normal_(0, 0.1)
    return sae


def random_saes(sites=RANDOM_SITES) -> dict[str, SparseAutoencoder]:
    """Seeded random SAEs (32 → 24, seed = the site's index) at ``sites`` of the 2-layer
    test models."""
    return {site: random_sae(32, site, seed=seed, n_features=24)
            for seed, site in enumerate(sites)}


def random_cross_layer_transcoder(width: int = 32, n_features: int = 20, n_layers: int = 2, *,
                                  input_kind: str = "mlp_in", seed: int = 0):
    """A seeded random ReLU cross-layer transcoder of ``n_layers`` layers: layer ``L`` reads
    ``{input_kind}.L`` and writes ``mlp_out.L`` .. ``mlp_out.{n_layers - 1}``; biases set so
    that features fire."""
    from featcircuits.dictionaries import CrossLayerFeatures, CrossLayerTranscoder

    generator = torch.Generator().manual_seed(seed)
    outputs = [f"mlp_out.{layer}" for layer in range(n_layers)]
    layers = []
    for layer in range(n_layers):
        features = CrossLayerFeatures(width, n_features, n_layers - layer, layer=layer,
                                      input_site=f"{input_kind}.{layer}",
                                      output_sites=outputs[layer:])
        with torch.no_grad():
            features.W_enc.copy_(torch.randn(n_features, width, generator=generator)
                                 / width ** 0.5)
            features.b_enc.copy_(torch.rand(n_features, generator=generator) * 0.25 - 0.05)
            features.W_dec.copy_(torch.randn(features.W_dec.shape, generator=generator) * 0.3)
            features.b_dec.copy_(torch.randn(width, generator=generator) * 0.1)
        layers.append(features)
    return CrossLayerTranscoder(layers)
