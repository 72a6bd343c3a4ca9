"""featcircuits' linear bases in SAELens' folder layout (``featcircuits-<kind>``).

They are stored as SAELens ``standard`` SAEs (``W_enc = encoder.T``, ``b_enc = 0``,
``W_dec = directions``, ``b_dec = mean``; PCA adds ``explained_variance``) with
``cfg["featcircuits"]["kind"]`` saying which basis it is. SAELens would read them as ReLU
SAEs, so they are for featcircuits only. Neuron and random bases are rebuilt from their
config and must agree with the stored tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.bases import (
    ICABasis,
    LinearBasis,
    NeuronBasis,
    PCABasis,
    RandomBasis,
)
from featcircuits.dictionaries.formats import DictionaryState
from featcircuits.dictionaries.saelens import SaelensFormat, native_cfg, native_fields
from featcircuits.errors import DictionaryLoadError


class LinearFormat(SaelensFormat):
    """``featcircuits-linear``: a ``LinearBasis`` with stored encoder and directions."""

    name = "featcircuits-linear"
    rebuilt = False  # neuron and random bases: rebuilt from the config, checked against tensors

    @classmethod
    def build(cls, encoder: torch.Tensor, directions: torch.Tensor, mean: torch.Tensor,
              state: DictionaryState, site: str | None, meta: dict[str, Any],
              config: dict[str, Any]) -> LinearBasis:
        """The basis from ``encoder [n, d]``, ``directions [n, d]`` and ``mean [d]``."""
        return LinearBasis(encoder, directions, mean, site=site, meta=meta)

    @classmethod
    def from_state(cls, state: DictionaryState) -> LinearBasis:
        tensors = state.tensors
        site, meta, config = native_fields(state.config)
        encoder, directions, mean = tensors["W_enc"].T, tensors["W_dec"], tensors["b_dec"]
        basis = cls.build(encoder, directions, mean, state, site, meta, config or {})
        if cls.rebuilt and not (torch.equal(basis.encoder, encoder)
                                and torch.equal(basis.directions, directions)):
            raise DictionaryLoadError(f"stored {basis.kind} basis does not match its config",
                                      hint="the file was edited or is corrupt")
        return basis

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_writes(dictionary, (cls.name,))
        basis: LinearBasis = dictionary  # type: ignore[assignment]
        tensors = {"W_enc": basis.encoder.T, "b_enc": torch.zeros(basis.n_features),
                   "W_dec": basis.directions, "b_dec": basis.mean}
        tensors.update(cls.extra_tensors(basis))
        # its own architecture name: SAELens refuses it by name (as "standard" it would read
        # a neuron or random basis as a ReLU SAE and fail on PCA's extra tensor)
        return DictionaryState(tensors, native_cfg(basis, cls.name, True))

    @classmethod
    def extra_tensors(cls, basis: LinearBasis) -> dict[str, torch.Tensor]:
        """Tensors stored besides the four SAELens ones."""
        return {}


class NeuronFormat(LinearFormat):
    """``featcircuits-neuron``: the standard basis, rebuilt from ``d_model``."""

    name = "featcircuits-neuron"
    rebuilt = True

    @classmethod
    def build(cls, encoder: torch.Tensor, directions: torch.Tensor, mean: torch.Tensor,
              state: DictionaryState, site: str | None, meta: dict[str, Any],
              config: dict[str, Any]) -> LinearBasis:
        return NeuronBasis(encoder.shape[1], site=site, meta=meta)


class RandomFormat(LinearFormat):
    """``featcircuits-random``: a seeded random basis, rebuilt from its seed."""

    name = "featcircuits-random"
    rebuilt = True

    @classmethod
    def build(cls, encoder: torch.Tensor, directions: torch.Tensor, mean: torch.Tensor,
              state: DictionaryState, site: str | None, meta: dict[str, Any],
              config: dict[str, Any]) -> LinearBasis:
        return RandomBasis(encoder.shape[1], seed=int(config.get("seed", 0)), mean=mean,
                           n_features=encoder.shape[0], site=site, meta=meta)


class PCAFormat(LinearFormat):
    """``featcircuits-pca``: components plus ``explained_variance``."""

    name = "featcircuits-pca"

    @classmethod
    def tensor_shapes(cls, cfg: dict[str, Any], d_in: int, d_sae: int, where: Path
                      ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        required, _ = super().tensor_shapes(cfg, d_in, d_sae, where)
        return required, {"explained_variance": (d_sae,)}

    @classmethod
    def build(cls, encoder: torch.Tensor, directions: torch.Tensor, mean: torch.Tensor,
              state: DictionaryState, site: str | None, meta: dict[str, Any],
              config: dict[str, Any]) -> LinearBasis:
        return PCABasis(encoder, mean, state.tensors.get("explained_variance"), site=site,
                        meta=meta)

    @classmethod
    def extra_tensors(cls, basis: LinearBasis) -> dict[str, torch.Tensor]:
        return {"explained_variance": basis.explained_variance}


class ICAFormat(LinearFormat):
    """``featcircuits-ica``: unmixing (encoder) and mixing (directions) matrices."""

    name = "featcircuits-ica"

    @classmethod
    def build(cls, encoder: torch.Tensor, directions: torch.Tensor, mean: torch.Tensor,
              state: DictionaryState, site: str | None, meta: dict[str, Any],
              config: dict[str, Any]) -> LinearBasis:
        return ICABasis(encoder, mean, directions.T, site=site, meta=meta)


__all__ = ["ICAFormat", "LinearFormat", "NeuronFormat", "PCAFormat", "RandomFormat"]
