"""Gated SAEs (Rajamanoharan et al. 2024), as SAELens' ``GatedSAE`` and dictionary_learning's
``GatedAutoEncoder`` compute them::

    h    = (x - b_dec) @ W_enc                      # the pre-encoder bias is optional
    gate = (h + b_gate > 0)
    c    = gate * relu(h * exp(r_mag) + b_mag)      # [..., n_features]
    x̂    = c @ W_dec + b_dec

Decoding is affine, so patching, circuits and error terms work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import ParameterError


class GatedSparseAutoencoder(Dictionary):
    """A gated SAE: ``W_enc [d_model, n_features]`` (shared by gate and magnitude paths),
    ``b_gate``, ``b_mag``, ``r_mag [n_features]``, ``W_dec [n_features, d_model]``,
    ``b_dec [d_model]``.

    Args:
        d_model: input width.
        n_features: dictionary size.
        pre_encoder_bias: subtract ``b_dec`` before encoding (SAELens'
            ``apply_b_dec_to_input``; dictionary_learning always does).
    """

    kind = "sae"

    def __init__(self, d_model: int, n_features: int, *, pre_encoder_bias: bool = True,
                 site: str | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(site=site, meta=meta)
        if d_model <= 0 or n_features <= 0:
            raise ParameterError(
                f"d_model and n_features must be positive, got {d_model} and {n_features}")
        self.pre_encoder_bias = bool(pre_encoder_bias)
        self.W_enc = nn.Parameter(torch.zeros(d_model, n_features))
        self.W_dec = nn.Parameter(torch.zeros(n_features, d_model))
        self.b_gate = nn.Parameter(torch.zeros(n_features))
        self.b_mag = nn.Parameter(torch.zeros(n_features))
        self.r_mag = nn.Parameter(torch.zeros(n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_model))

    @property
    def directions(self) -> torch.Tensor:
        return self.W_dec

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.b_dec

    @property
    def architecture(self) -> str:
        """``"gated"`` (SAELens' name)."""
        return "gated"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_model]`` → ``gate * magnitude``, ``[..., n_features]``."""
        if self.pre_encoder_bias:
            x = x - self.b_dec
        gate = (x @ self.W_enc + self.b_gate) > 0
        magnitude = torch.relu(x @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
        return magnitude * gate

    @property
    def separable_rows(self) -> bool:
        """Whether ``encode_rows`` computes single features (the base ``encode``)."""
        return type(self).encode is GatedSparseAutoencoder.encode

    def encode_rows(self, x: torch.Tensor, feature_ids: torch.Tensor) -> torch.Tensor:
        """Row ``r``'s activation of feature ``feature_ids[r]``, ``[R, ...]`` (see
        ``Dictionary.encode_rows``): one encoder column per row."""
        if not self.separable_rows:
            return super().encode_rows(x, feature_ids)
        ids = feature_ids.to(self.W_enc.device).long()
        if self.pre_encoder_bias:
            x = x - self.b_dec
        h = torch.einsum("r...d,rd->r...", x, self.W_enc.T[ids])

        def per_row(values):
            return values[ids].reshape(-1, *([1] * (h.ndim - 1)))

        gate = (h + per_row(self.b_gate)) > 0
        return torch.relu(h * per_row(self.r_mag).exp() + per_row(self.b_mag)) * gate

    def config(self) -> dict[str, Any]:
        return {"pre_encoder_bias": self.pre_encoder_bias}


__all__ = ["GatedSparseAutoencoder"]
