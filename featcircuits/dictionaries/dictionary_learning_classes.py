"""dictionary_learning's newer classes, read and written in its ``ae.pt`` layout
(``featcircuits.dictionaries.dictionary_learning``), each exactly as its own ``encode``
computes features:

- ``GatedAutoEncoder``: ``encoder.weight [d_sae, d_in]``, ``gate_bias``, ``mag_bias``,
  ``r_mag [d_sae]``, ``decoder.weight [d_in, d_sae]``, ``decoder_bias [d_in]`` → a
  ``GatedSparseAutoencoder`` (``b_dec`` subtracted first).
- ``AutoEncoderNew`` (Anthropic's April 2024 update architecture): ``relu(encoder(x))``, no
  pre-encoder bias, ``decoder`` with its own bias → a ReLU ``SparseAutoencoder`` with
  ``pre_encoder_bias=False``.
- ``BatchTopKSAE``: per-batch top-k only in training; ``encode`` (``use_threshold=True``)
  keeps ``relu(pre) * (relu(pre) > threshold)`` with the learned scalar ``threshold``, which is
  featcircuits' ``jumprelu`` with that threshold for every feature (for any sign of it).
- ``MatryoshkaBatchTopKSAE``: the same with SAELens-oriented ``W_enc [d_in, d_sae]``, ``b_dec``
  subtracted first, and ``group_sizes`` (every group active at inference).

``k`` (and ``group_sizes``) matter only in training; they are kept in ``meta`` and written back.
"""

from __future__ import annotations

from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.dictionary_learning import (
    DictionaryLearningFormat,
    linear_shapes,
)
from featcircuits.dictionaries.formats import DictionaryState, fill_sae
from featcircuits.dictionaries.gated import GatedSparseAutoencoder
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import DictionaryError, DictionaryLoadError


class GatedAutoEncoderFormat(DictionaryLearningFormat):
    """``GatedAutoEncoder`` ↔ ``GatedSparseAutoencoder``."""

    name = "GatedAutoEncoder"
    stores = ("gated",)

    @classmethod
    def tensor_shapes(cls, state, d_in, d_sae):
        return ({"encoder.weight": (d_sae, d_in), "decoder.weight": (d_in, d_sae),
                 "decoder_bias": (d_in,), "r_mag": (d_sae,), "gate_bias": (d_sae,),
                 "mag_bias": (d_sae,)}, {})

    @classmethod
    @torch.no_grad()
    def from_state(cls, state: DictionaryState) -> GatedSparseAutoencoder:
        t = state.tensors
        d_sae, d_in = t["encoder.weight"].shape
        sae = GatedSparseAutoencoder(d_in, d_sae, pre_encoder_bias=True,
                                     site=state.config["site"], meta=state.config["meta"])
        sae.W_enc.copy_(t["encoder.weight"].T)
        sae.W_dec.copy_(t["decoder.weight"].T)
        sae.b_dec.copy_(t["decoder_bias"])
        sae.r_mag.copy_(t["r_mag"])
        sae.b_gate.copy_(t["gate_bias"])
        sae.b_mag.copy_(t["mag_bias"])
        return sae

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_sae(dictionary, pre_encoder_bias=True)
        sae: GatedSparseAutoencoder = dictionary  # type: ignore[assignment]
        tensors = {"encoder.weight": sae.W_enc.T, "decoder.weight": sae.W_dec.T,
                   "decoder_bias": sae.b_dec, "r_mag": sae.r_mag, "gate_bias": sae.b_gate,
                   "mag_bias": sae.b_mag}
        return DictionaryState(tensors, {"trainer": cls.trainer(sae)})


class AutoEncoderNewFormat(DictionaryLearningFormat):
    """``AutoEncoderNew`` ↔ a ReLU ``SparseAutoencoder`` without pre-encoder bias."""

    name = "AutoEncoderNew"
    stores = ("standard",)

    @classmethod
    def tensor_shapes(cls, state, d_in, d_sae):
        return linear_shapes(state, d_in, d_sae, bias="decoder.bias"), {}

    @classmethod
    def from_state(cls, state: DictionaryState) -> SparseAutoencoder:
        t = state.tensors
        d_sae, d_in = t["encoder.weight"].shape
        sae = SparseAutoencoder(d_in, d_sae, pre_encoder_bias=False, site=state.config["site"],
                                meta=state.config["meta"])
        fill_sae(sae, t["encoder.weight"].T, t["encoder.bias"], t["decoder.weight"].T,
                 t["decoder.bias"])
        return sae

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_sae(dictionary, pre_encoder_bias=False)
        sae: SparseAutoencoder = dictionary  # type: ignore[assignment]
        tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc,
                   "decoder.weight": sae.W_dec.T, "decoder.bias": sae.b_dec}
        return DictionaryState(tensors, {"trainer": cls.trainer(sae)})


class BatchTopKSAEFormat(DictionaryLearningFormat):
    """``BatchTopKSAE`` ↔ a ``jumprelu`` ``SparseAutoencoder`` whose features share one
    threshold."""

    name = "BatchTopKSAE"
    stores = ("jumprelu",)

    @classmethod
    def tensor_shapes(cls, state, d_in, d_sae):
        required = linear_shapes(state, d_in, d_sae, bias="b_dec")
        required.update({"k": tuple(state["k"].shape) if "k" in state else (),
                         "threshold": ()})
        return required, {}

    @classmethod
    def build(cls, state: DictionaryState, W_enc: torch.Tensor, b_enc: torch.Tensor,
              W_dec: torch.Tensor) -> SparseAutoencoder:
        """The SAE from SAELens-oriented weights and the state's scalar threshold."""
        t = state.tensors
        d_in, d_sae = W_enc.shape
        if state.config.get("k") is None:
            raise DictionaryLoadError(f"{str(state.where)!r}: dictionary_learning {cls.name} "
                                      "needs k (tensor 'k' or config.json's trainer.k)")
        sae = SparseAutoencoder(d_in, d_sae, activation="jumprelu", pre_encoder_bias=True,
                                site=state.config["site"], meta=state.config["meta"])
        fill_sae(sae, W_enc, b_enc, W_dec, t["b_dec"],
                 t["threshold"].reshape(()).expand(d_sae))
        return sae

    @classmethod
    def from_state(cls, state: DictionaryState) -> SparseAutoencoder:
        t = state.tensors
        return cls.build(state, t["encoder.weight"].T, t["encoder.bias"], t["decoder.weight"].T)

    @classmethod
    def shared_threshold(cls, dictionary: Dictionary) -> tuple[SparseAutoencoder, torch.Tensor,
                                                               int]:
        """The SAE, its one threshold and ``k`` (from ``meta``), or ``DictionaryError``."""
        cls.check_sae(dictionary, pre_encoder_bias=True)
        sae: SparseAutoencoder = dictionary  # type: ignore[assignment]
        threshold = sae.threshold.detach()
        k = sae.meta.get("k")
        if not bool((threshold == threshold[0]).all()) or not isinstance(k, int):
            raise DictionaryError(
                f"dictionary_learning's {cls.name} cannot store {sae!r}: it needs one threshold "
                f"shared by all features and meta['k'] (got k={k!r})",
                hint="save it with save_dictionary (SAELens jumprelu layout) instead")
        return sae, threshold[0], k

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        sae, threshold, k = cls.shared_threshold(dictionary)
        tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc,
                   "decoder.weight": sae.W_dec.T, "b_dec": sae.b_dec,
                   "k": torch.tensor(k, dtype=torch.int32), "threshold": threshold}
        return DictionaryState(tensors, {"trainer": cls.trainer(sae, k=k)})


class MatryoshkaBatchTopKSAEFormat(BatchTopKSAEFormat):
    """``MatryoshkaBatchTopKSAE``: ``BatchTopKSAE`` in SAELens orientation plus
    ``group_sizes``."""

    name = "MatryoshkaBatchTopKSAE"
    main_tensor = ("W_enc", False)

    @classmethod
    def tensor_shapes(cls, state, d_in, d_sae):
        groups = tuple(state["group_sizes"].shape) if "group_sizes" in state else (1,)
        return ({"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
                 "b_dec": (d_in,), "k": tuple(state["k"].shape) if "k" in state else (),
                 "threshold": (), "group_sizes": groups}, {})

    @classmethod
    def from_state(cls, state: DictionaryState) -> SparseAutoencoder:
        t = state.tensors
        groups = [int(g) for g in t["group_sizes"].reshape(-1)]
        if any(g <= 0 for g in groups) or sum(groups) != t["W_enc"].shape[1]:
            raise DictionaryLoadError(
                f"{str(state.where)!r}: dictionary_learning {cls.name}: group_sizes {groups} "
                f"must be positive and sum to dict_size {t['W_enc'].shape[1]}",
                hint="the file is corrupt or was edited")
        sae = cls.build(state, t["W_enc"], t["b_enc"], t["W_dec"])
        sae.meta["group_sizes"] = groups
        return sae

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        sae, threshold, k = cls.shared_threshold(dictionary)
        groups: Any = sae.meta.get("group_sizes") or [sae.n_features]
        tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec,
                   "b_dec": sae.b_dec, "k": torch.tensor(k, dtype=torch.int32),
                   "threshold": threshold, "group_sizes": torch.tensor(groups)}
        return DictionaryState(tensors, {"trainer": cls.trainer(sae, k=k, group_sizes=groups)})


__all__ = [
    "AutoEncoderNewFormat",
    "BatchTopKSAEFormat",
    "GatedAutoEncoderFormat",
    "MatryoshkaBatchTopKSAEFormat",
]
