"""SAEs trained on a TransformerLens model loaded with ``center_writing_weights=True``.

TransformerLens can subtract from every weight that writes to the residual stream its mean
over ``d_model``. Each write then has zero mean, so the residual stream (and every
attention/MLP output) it sees is the Hugging Face one minus its mean over ``d_model``. An SAE
trained there (e.g. SAELens' ``gpt2-small-res-jb``) must be fed centred activations::

    c = act((x - mean_d(x) - b_dec) @ W_enc + b_enc)

Decoding is unchanged; what the centring removes lands in the error term, so
``decode(encode(x)) + error(x) == x`` still holds exactly. Written in SAELens' layout the
centring is folded into the encoder (``fold_centring``), so SAELens computes the same features.
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

    def _row_pre_activations(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``pre_activations(x[r])[..., ids[r]]`` per row, ``[R, ...]``."""
        return super()._row_pre_activations(x - x.mean(dim=-1, keepdim=True), ids)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "center_input": True}


@torch.no_grad()
def fold_centring(sae: CenteredSparseAutoencoder) -> dict[str, torch.Tensor]:
    """``W_enc`` and ``b_enc`` that compute a centred SAE's pre-activations from the raw
    input, so SAELens (which does not centre) computes its features exactly.

    Centring is the linear map ``C = I − 11ᵀ/d``: ``(x − mean(x)) @ W = x @ (C W)`` with
    ``C W = W − mean over d_model of W``. With the pre-encoder bias SAELens computes
    ``(x − b_dec) @ CW + b_enc'``, so ``b_enc' = b_enc − b_dec @ W + b_dec @ CW``. Reading the
    file back as centred gives the same function (``C`` is idempotent: ``C CW = CW``).
    """
    W = sae.W_enc.detach()
    centred = W - W.mean(dim=0, keepdim=True)
    b_enc = sae.b_enc.detach()
    if sae.pre_encoder_bias:
        b_enc = b_enc - sae.b_dec.detach() @ W + sae.b_dec.detach() @ centred
    return {"W_enc": centred, "b_enc": b_enc}
