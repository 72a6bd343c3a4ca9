"""SAEs that normalise each input before encoding and undo it after decoding (SAELens'
``normalize_activations`` = ``constant_norm_rescale`` or ``layer_norm``).

With ``n(x)`` the normalised input, a per-input scale ``s(x) [..., 1]`` and shift ``m(x)``::

    c  = act((n(x) - b_dec) @ W_enc + b_enc)
    x̂ = s(x) · (c @ W_dec + b_dec) + m(x)

``constant_norm_rescale``: ``n(x) = x · sqrt(d)/‖x‖``, ``s(x) = ‖x‖/sqrt(d)``, ``m = 0``.
``layer_norm``: ``n(x) = (x − μ)/(σ + 1e-5)``, ``s(x) = σ``, ``m(x) = μ`` (μ the mean and σ the
unbiased standard deviation over ``d_model``; SAELens multiplies back by σ, not σ + 1e-5).

The decoder is no longer affine: feature i writes ``s(x)·W_dec[i]``, a direction scaled per
prompt and position. So ``decode(features, x)`` needs the input whose scale it undoes
(``x=None`` is refused), and ``decoder_scale(x)`` gives ``s(x)``: the patching engine
(``featcircuits.engine.edits.patch_site``) multiplies its edit by ``s(x̄)`` of the activation
it patches, ``x′ = x̄ + s(x̄)·Σ(c′ᵢ − c̄ᵢ)W_dec[i]`` — SAELens' own decode difference at that
input, with the error term kept.
"""

from __future__ import annotations

from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.sae import THRESHOLDED, SparseAutoencoder
from featcircuits.errors import DictionaryError, ParameterError

NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")
LAYER_NORM_EPS = 1e-5  # SAELens' run_time_activation_ln_in default


class NormalizedSparseAutoencoder(SparseAutoencoder):
    """A ``SparseAutoencoder`` with SAELens' per-input activation normalisation.

    Args:
        normalization: ``"constant_norm_rescale"`` or ``"layer_norm"``; the other arguments
            are ``SparseAutoencoder``'s.
    """

    def __init__(self, d_model: int, n_features: int, *, normalization: str,
                 **kwargs: Any) -> None:
        super().__init__(d_model, n_features, **kwargs)
        if normalization not in NORMALIZATIONS:
            raise ParameterError(f"unknown activation normalisation {normalization!r}",
                                 hint=f"use one of {', '.join(NORMALIZATIONS)}")
        self.normalization = normalization

    # ---------------------------------------------------------------- the scale
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``n(x) [..., d_model]``, what the encoder reads (as SAELens computes it)."""
        if self.normalization == "constant_norm_rescale":
            return x * (x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True))
        centred = x - x.mean(dim=-1, keepdim=True)
        return centred / (centred.std(dim=-1, keepdim=True) + LAYER_NORM_EPS)

    def decoder_scale(self, x: torch.Tensor) -> torch.Tensor:
        """``s(x) [..., 1]``: ``‖x‖/sqrt(d)`` or the unbiased std of ``x`` over ``d_model``."""
        if self.normalization == "constant_norm_rescale":
            return 1 / (x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True))
        return (x - x.mean(dim=-1, keepdim=True)).std(dim=-1, keepdim=True)

    def decoder_shift(self, x: torch.Tensor) -> torch.Tensor:
        """``m(x) [..., 1]``: the mean of ``x`` over ``d_model`` (``layer_norm``) or 0."""
        if self.normalization == "constant_norm_rescale":
            return torch.zeros_like(x[..., :1])
        return x.mean(dim=-1, keepdim=True)

    # ------------------------------------------------------------ encode/decode
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return super().encode(self.normalize(x))

    @property
    def separable(self) -> bool:
        return self.activation in ("relu", *THRESHOLDED)

    def encode_features(self, x: torch.Tensor, feature_ids: torch.Tensor | None = None
                        ) -> torch.Tensor:
        if feature_ids is None or not self.separable:
            return Dictionary.encode_features(self, x, feature_ids)
        return super().encode_features(self.normalize(x), feature_ids)

    def decode(self, features: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``s(x)·(features @ W_dec + b_dec) + m(x)``, ``[..., d_model]``; ``x [..., d_model]``
        is the input whose normalisation is undone (required)."""
        if x is None:
            raise DictionaryError(
                f"{self!r} normalises each input ({self.normalization}): decoding undoes "
                "that input's scale s(x), so decode needs the input",
                hint="call decode(features, x) with the activation the features were "
                "encoded from (error(x) and forward(x) do)")
        return (self.decoder_scale(x) * super().decode(features)
                + self.decoder_shift(x))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "normalization": self.normalization}

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", normalization={self.normalization!r})"


__all__ = ["LAYER_NORM_EPS", "NORMALIZATIONS", "NormalizedSparseAutoencoder"]
