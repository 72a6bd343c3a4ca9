"""SAEs trained on a TransformerLens model loaded with ``center_writing_weights=True``.

TransformerLens can subtract from every weight that writes to the residual stream its mean
over ``d_model``. Each write then has zero mean, so the residual stream (and every
attention/MLP output) it sees is the Hugging Face one minus its mean over ``d_model``. An SAE
trained there (e.g. SAELens' ``gpt2-small-res-jb``) must be fed centred activations::

    c = act((x - mean_d(x) - b_dec) @ W_enc + b_enc)

Decoding is unchanged; what the centring removes lands in the error term, so
``decode(encode(x)) + error(x) == x`` still holds exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from featcircuits.dictionaries.sae import SparseAutoencoder


class CenteredSparseAutoencoder(SparseAutoencoder):
    """A ``SparseAutoencoder`` that subtracts each input's mean over ``d_model`` first."""

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean_d(x) - b_dec) @ W_enc + b_enc``, ``[..., n_features]``."""
        return super().pre_activations(x - x.mean(dim=-1, keepdim=True))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "center_input": True}
