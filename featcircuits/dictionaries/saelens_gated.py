"""SAELens' gated SAE in its folder layout (``architecture: gated``): ``W_enc [d_in, d_sae]``,
``b_gate``, ``b_mag``, ``r_mag [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``; loads as
``GatedSparseAutoencoder`` (``apply_b_dec_to_input`` is its pre-encoder bias)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.formats import DictionaryState, fill_parameters, json_bool
from featcircuits.dictionaries.gated import GatedSparseAutoencoder
from featcircuits.dictionaries.saelens import (
    CFG_FILE,
    SaelensFormat,
    check_inference_config,
    native_cfg,
    native_fields,
)


class GatedSae(SaelensFormat):
    """SAELens' gated SAE: ``W_enc``, ``b_gate``, ``b_mag``, ``r_mag``, ``W_dec``, ``b_dec``."""

    name = "gated"

    @classmethod
    def tensor_shapes(cls, cfg: dict[str, Any], d_in: int, d_sae: int, where: Path
                      ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        return ({"W_enc": (d_in, d_sae), "b_gate": (d_sae,), "b_mag": (d_sae,),
                 "r_mag": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}, {})

    @classmethod
    def from_state(cls, state: DictionaryState) -> GatedSparseAutoencoder:
        cfg, tensors, folder = state.config, state.tensors, state.where
        site, meta, _ = native_fields(cfg)
        check_inference_config(cfg, folder)
        cfg_path = folder / CFG_FILE if folder is not None else None
        sae = GatedSparseAutoencoder(
            cfg["d_in"], cfg["d_sae"], site=site, meta=meta,
            pre_encoder_bias=json_bool(cfg, "apply_b_dec_to_input", True, cfg_path))
        fill_parameters(sae, tensors, ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"))
        return sae

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_writes(dictionary, (cls.name,))
        sae: GatedSparseAutoencoder = dictionary  # type: ignore[assignment]
        tensors = {name: getattr(sae, name)
                   for name in ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec")}
        return DictionaryState(tensors, native_cfg(sae, cls.name, sae.pre_encoder_bias))


__all__ = ["GatedSae"]
