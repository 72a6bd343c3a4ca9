"""Sparse autoencoders: tied or untied decoder; ReLU, TopK or JumpReLU activations.

JumpReLU is computed as SAELens, dictionary_learning and Gemma Scope compute it:
``relu(pre) * (pre > threshold)``, so a negative threshold acts like 0. circuit-tracer's
JumpReLU keeps the sign, ``pre * (pre > threshold)`` (a pre-activation between a negative
threshold and 0 passes through negative); that is the activation ``"jumprelu_signed"``.
For thresholds >= 0 the two agree, and ``jumprelu`` with threshold t equals
``jumprelu_signed`` with threshold ``max(t, 0)`` (what the circuit-tracer writer stores).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import ParameterError

ACTIVATIONS = ("relu", "topk", "jumprelu", "jumprelu_signed")
SAELENS_ARCHITECTURES = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
THRESHOLDED = ("jumprelu", "jumprelu_signed")


class SparseAutoencoder(Dictionary):
    """``c = act((x - b_dec) @ W_enc + b_enc)``, ``x̂ = c @ W_dec + b_dec``.

    Shapes follow SAELens: ``W_enc [d_model, n_features]``, ``W_dec [n_features, d_model]``.

    Args:
        d_model: input width.
        n_features: dictionary size.
        activation: ``"relu"``, ``"topk"`` (keep the ``k`` largest pre-activations, then
            ReLU), ``"jumprelu"`` (``relu(pre) * (pre > threshold)``, SAELens) or
            ``"jumprelu_signed"`` (``pre * (pre > threshold)``, circuit-tracer).
        k: number of active features for ``"topk"``.
        tied: decoder is the encoder's transpose (one shared weight).
        pre_encoder_bias: subtract ``b_dec`` before encoding (SAELens' apply_b_dec_to_input).
    """

    kind = "sae"

    def __init__(
        self,
        d_model: int,
        n_features: int,
        *,
        activation: str = "relu",
        k: int | None = None,
        tied: bool = False,
        pre_encoder_bias: bool = True,
        site: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(site=site, meta=meta)
        if activation not in ACTIVATIONS:
            raise ParameterError(f"unknown SAE activation {activation!r}",
                                 hint=f"use one of {', '.join(ACTIVATIONS)}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral)):
            raise ParameterError(f"k must be a whole number, got {k!r} ({type(k).__name__})",
                                 hint="pass the number of active features as an int")
        if activation == "topk" and (k is None or not 0 < int(k) <= n_features):
            raise ParameterError(f"topk SAE needs 0 < k <= {n_features}, got k={k!r}")
        if d_model <= 0 or n_features <= 0:
            raise ParameterError(
                f"d_model and n_features must be positive, got {d_model} and {n_features}")
        self.activation = activation
        self.k = None if k is None else int(k)
        self.tied = bool(tied)
        self.pre_encoder_bias = bool(pre_encoder_bias)
        weight = torch.empty(d_model, n_features)
        nn.init.kaiming_uniform_(weight.T, a=5**0.5)
        weight = weight / weight.norm(dim=0, keepdim=True)
        self.W_enc = nn.Parameter(weight)
        self.W_dec_untied = None if tied else nn.Parameter(weight.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        if activation in THRESHOLDED:
            self.threshold = nn.Parameter(torch.zeros(n_features))
        else:
            self.threshold = None

    @property
    def W_dec(self) -> torch.Tensor:
        """Decoder weight ``[n_features, d_model]`` (the encoder's transpose when tied)."""
        return self.W_enc.T if self.tied else self.W_dec_untied

    @property
    def directions(self) -> torch.Tensor:
        return self.W_dec

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.b_dec

    @property
    def architecture(self) -> str | None:
        """SAELens' name of its activation: ``standard`` (ReLU), ``topk`` or ``jumprelu``
        (``None`` for ``jumprelu_signed``, which only transcoders use)."""
        return SAELENS_ARCHITECTURES.get(self.activation)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc``, ``[..., n_features]``."""
        if self.pre_encoder_bias:
            x = x - self.b_dec
        pre = x @ self.W_enc
        # the bias is added in place where that is the same tensor: at 32,768 features
        # every [rows, T, n_features] temporary is 2 MiB per row and position
        if (torch.result_type(pre, self.b_enc) == pre.dtype
                and not (self.b_enc.requires_grad and torch.is_grad_enabled())):
            return pre.add_(self.b_enc)
        return pre + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        if self.activation == "relu":
            # pre_activations' own result is a fresh temporary: rectify it in place
            fresh = type(self).pre_activations is SparseAutoencoder.pre_activations
            return torch.relu_(pre) if fresh else torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        if self.activation == "jumprelu_signed":
            return pre * (pre > self.threshold)
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    @property
    def separable(self) -> bool:
        return self.activation in ("relu", *THRESHOLDED) and (
            type(self).encode is SparseAutoencoder.encode
            and type(self).pre_activations is SparseAutoencoder.pre_activations)

    def encode_features(self, x: torch.Tensor, feature_ids: torch.Tensor | None = None
                        ) -> torch.Tensor:
        if feature_ids is None or not self.separable:
            return super().encode_features(x, feature_ids)
        if self.pre_encoder_bias:
            x = x - self.b_dec
        pre = x @ self.W_enc[:, feature_ids] + self.b_enc[feature_ids]
        return self._activate(pre, None if self.threshold is None
                              else self.threshold[feature_ids])

    def encode_rows(self, x: torch.Tensor, feature_ids: torch.Tensor) -> torch.Tensor:
        """Row ``r``'s activation of feature ``feature_ids[r]``, ``[R, ...]`` (see
        ``Dictionary.encode_rows``): one encoder column per row for ReLU and JumpReLU
        (also centred SAEs and transcoders), every feature for TopK."""
        if not self.separable_rows:
            return super().encode_rows(x, feature_ids)
        ids = feature_ids.to(self.W_enc.device).long()
        pre = self._row_pre_activations(x, ids)
        threshold = None if self.threshold is None else _per_row(self.threshold[ids], pre)
        return self._activate(pre, threshold)

    def _row_pre_activations(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``pre_activations(x[r])[..., ids[r]]`` per row, ``[R, ...]``."""
        if self.pre_encoder_bias:
            x = x - self.b_dec
        pre = torch.einsum("r...d,rd->r...", x, self.W_enc.T[ids])
        return pre + _per_row(self.b_enc[ids], pre)

    @property
    def separable_rows(self) -> bool:
        """Whether ``encode_rows`` computes single features: a separable activation (not
        TopK), the base ``encode``, and the ``pre_activations`` that
        ``_row_pre_activations`` mirrors (a subclass overriding one must override the
        other)."""
        cls = type(self)
        owner = next(k for k in cls.__mro__ if "_row_pre_activations" in vars(k))
        return (self.activation in ("relu", *THRESHOLDED)
                and cls.encode is SparseAutoencoder.encode
                and cls.pre_activations is owner.pre_activations)

    def _activate(self, pre: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
        """The (separable) activation of pre-activations ``pre`` with ``threshold`` (its
        features' thresholds, broadcastable to ``pre``)."""
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > threshold)
        return pre * (pre > threshold)

    def config(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "k": self.k,
            "tied": self.tied,
            "pre_encoder_bias": self.pre_encoder_bias,
        }

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (encoder columns compensate when untied)."""
        if self.tied:
            self.W_enc.div_(self.W_enc.norm(dim=0, keepdim=True).clamp_min(1e-8))
            return
        norms = self.W_dec_untied.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_dec_untied.div_(norms)
        self.W_enc.mul_(norms.T)
        self.b_enc.mul_(norms.squeeze(1))
        if self.threshold is not None:
            self.threshold.mul_(norms.squeeze(1))


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values [R]`` shaped ``[R, 1, ...]`` to broadcast over ``like [R, ...]``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))
