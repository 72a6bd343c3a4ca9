"""``Dictionary.encode_rows``: each row's own feature equals ``encode(x)`` picked at that
feature, for every architecture (one encoder row per row where features are separable, a
full encode otherwise), and its gradient matches too."""

from __future__ import annotations

import pytest
import torch

from featcircuits.dictionaries import LinearBasis, SparseAutoencoder
from featcircuits.dictionaries.centered import CenteredSparseAutoencoder
from featcircuits.dictionaries.gated import GatedSparseAutoencoder
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.dictionaries.transcoder import Transcoder

D, F = 16, 40


def _random(dictionary, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in dictionary.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return dictionary


DICTIONARIES = {
    "relu": lambda: SparseAutoencoder(D, F),
    "jumprelu": lambda: SparseAutoencoder(D, F, activation="jumprelu"),
    "jumprelu_signed": lambda: SparseAutoencoder(D, F, activation="jumprelu_signed"),
    "topk": lambda: SparseAutoencoder(D, F, activation="topk", k=5),
    "centered": lambda: CenteredSparseAutoencoder(D, F),
    "gated": lambda: GatedSparseAutoencoder(D, F),
    "transcoder": lambda: Transcoder(D, F, skip=True),
    "linear": lambda: LinearBasis(torch.randn(F, D, generator=torch.Generator().manual_seed(9))),
    "tokens": lambda: TokenBasis(torch.randn(F, D, generator=torch.Generator().manual_seed(9))),
}


@pytest.mark.parametrize("name", sorted(DICTIONARIES))
def test_encode_rows_picks_each_rows_feature(name):
    dictionary = _random(DICTIONARIES[name](), seed=1)
    x = torch.randn(7, 5, D, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    ids = torch.tensor([3, 0, 39, 3, 17, 8, 21])
    rows = dictionary.encode_rows(x, ids)
    full = dictionary.encode(x)
    expected = torch.stack([full[r, :, f] for r, f in enumerate(ids.tolist())])
    assert rows.shape == (7, 5)
    assert dictionary.separable_rows == (name not in ("topk", "tokens"))
    assert torch.allclose(rows, expected, atol=1e-5)
    assert name == "tokens" or bool((expected != 0).any())
    if name == "tokens":   # piecewise constant: no gradient
        assert not rows.requires_grad
        return
    weights = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad((rows * weights).sum(), [x])
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), [x])
    assert grad.abs().max() > 1e-3
    assert torch.allclose(grad, expected_grad, atol=1e-5)
