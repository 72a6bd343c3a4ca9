"""dictionary_learning's folder layout (``ae.pt`` + optional ``config.json``) and its classes.

``ae.pt`` is a state dict, read with ``torch.load(..., weights_only=True)`` (a pickle never
runs code). ``AutoEncoder``: ``encoder.weight [d_sae, d_in]``, ``encoder.bias``,
``decoder.weight [d_in, d_sae]``, ``bias`` (or ``b_dec``), transposed with respect to
SAELens; ``AutoEncoderTopK`` adds ``k``; ``JumpReluAutoEncoder`` stores ``W_enc``, ``b_enc``,
``W_dec``, ``b_dec``, ``threshold`` in SAELens' orientation. ``config.json`` holds
``trainer`` (``dict_class``, ``activation_dim``, ``dict_size``, ``k``, ``layer``, ``lm_name``,
``submodule_name``); the site comes from ``submodule_name``, ``layer`` or the folder name.
The architecture is the class name, told apart by the tensors (``W_enc``: JumpReLU; ``k``
tensor or ``trainer.k``: TopK; else ``AutoEncoder``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.formats import (
    DictionaryFormat,
    DictionaryState,
    expect_shape,
    fill_sae,
    read_json,
    require_tensors,
)
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import DictionaryError, DictionaryLoadError
from featcircuits.files import atomic_path
from featcircuits.model.sites import Site

AE_FILE = "ae.pt"
CONFIG_FILE = "config.json"
_SUBMODULE = re.compile(r"(resid_post|resid_out|mlp_out|attn_out|resid_pre)_layer_?(\d+)")
_OUR_KINDS = {"resid_out": "resid_out", "resid_in": "resid_pre", "mlp_out": "mlp_out",
              "attn_out": "attn_out"}


def site_from_dictionary_learning(name: str | None) -> str | None:
    """Our site name for a dictionary_learning submodule or folder name
    (``resid_post_layer3`` → ``resid_out.3``, ``embed`` → ``embed``), else ``None``."""
    if not name:
        return None
    match = _SUBMODULE.search(name)
    if match is None:
        return "embed" if "embed" in name else None
    kind = {"resid_post": "resid_out", "resid_pre": "resid_in"}.get(match.group(1), match.group(1))
    return f"{kind}.{int(match.group(2))}"


def _submodule_name(site: str | None) -> str | None:
    """The inverse of ``site_from_dictionary_learning`` (``None`` where there is none)."""
    if site is None:
        return None
    parsed = Site.parse(site)
    if parsed.kind == "embed":
        return "embed"
    kind = _OUR_KINDS.get(parsed.kind)
    return None if kind is None else f"{kind}_layer{parsed.layer}"


def read_dictionary_learning(folder: Path) -> tuple[str, DictionaryState]:
    """``ae.pt`` and ``config.json`` of ``folder`` → (class name, state); the state's config
    is ``trainer`` plus the ``site`` and ``meta`` it implies."""
    state = torch.load(folder / AE_FILE, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DictionaryLoadError(f"{str(folder / AE_FILE)!r} is not a state dict of tensors")
    trainer: dict[str, Any] = {}
    if (folder / CONFIG_FILE).is_file():
        trainer = read_json(folder / CONFIG_FILE).get("trainer") or {}
        if not isinstance(trainer, dict):
            raise DictionaryLoadError(f"{str(folder / CONFIG_FILE)!r}: 'trainer' is not an object")
    site = (site_from_dictionary_learning(trainer.get("submodule_name"))
            or (f"resid_out.{trainer['layer']}" if isinstance(trainer.get("layer"), int) else None)
            or site_from_dictionary_learning(str(folder)))
    meta = {"source": "dictionary_learning", "dict_class": trainer.get("dict_class"),
            "model_name": trainer.get("lm_name")}
    tensors = {k: v.float() for k, v in state.items()}
    if "W_enc" in tensors:
        architecture = JumpReluAutoEncoderFormat.name
    elif "k" in tensors or trainer.get("k") is not None:
        architecture = AutoEncoderTopKFormat.name
    else:
        architecture = AutoEncoderFormat.name
    config = {"trainer": trainer, "site": site, "meta": meta}
    return architecture, DictionaryState(tensors, config, folder / AE_FILE)


class DictionaryLearningFormat(DictionaryFormat):
    """Base of dictionary_learning's classes: ``write`` stores ``ae.pt`` + ``config.json``."""

    layout = "dictionary_learning"
    stores: tuple[str, ...] = ()  # the featcircuits architectures it stores without loss

    @classmethod
    def write(cls, state: DictionaryState, folder: Path) -> Path:
        with atomic_path(folder / AE_FILE) as tmp:
            torch.save({name: t.detach().cpu().contiguous() for name, t in state.tensors.items()},
                       tmp)
        with atomic_path(folder / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps({"trainer": state.config["trainer"]}, indent=2,
                                      sort_keys=True), encoding="utf-8")
        return folder

    @classmethod
    def trainer(cls, sae: SparseAutoencoder, **extra: Any) -> dict[str, Any]:
        """``config.json``'s ``trainer`` for ``sae``."""
        trainer = {"dict_class": cls.name, "activation_dim": sae.d_model,
                   "dict_size": sae.n_features, "lm_name": sae.meta.get("model_name"),
                   "submodule_name": _submodule_name(sae.site), **extra}
        return {key: value for key, value in trainer.items() if value is not None}

    @classmethod
    def check_sae(cls, dictionary: Dictionary, *, pre_encoder_bias: bool | None) -> None:
        """Refuse what the class cannot store: another architecture, centred inputs, or
        (``pre_encoder_bias`` given) a different pre-encoder bias."""
        cls.check_writes(dictionary, cls.stores)
        config = dictionary.config()
        if config.get("center_input") or (pre_encoder_bias is not None
                                          and config.get("pre_encoder_bias") != pre_encoder_bias):
            raise DictionaryError(
                f"dictionary_learning's {cls.name} cannot store {dictionary!r} with config "
                f"{config}", hint=f"it stores SAEs with pre_encoder_bias={pre_encoder_bias} "
                "and no input centring; save it with save_dictionary instead")


class AutoEncoderFormat(DictionaryLearningFormat):
    """``AutoEncoder``: a ReLU SAE in ``torch.nn.Linear`` orientation."""

    name = "AutoEncoder"
    stores = ("standard",)

    @classmethod
    def from_state(cls, state: DictionaryState) -> SparseAutoencoder:
        tensors, where = state.tensors, state.where
        require_tensors(tensors, ["encoder.weight", "encoder.bias", "decoder.weight"], where)
        d_sae, d_in = tensors["encoder.weight"].shape
        expect_shape("decoder.weight", tensors["decoder.weight"], (d_in, d_sae), where)
        expect_shape("encoder.bias", tensors["encoder.bias"], (d_sae,), where)
        bias = tensors.get("bias", tensors.get("b_dec"))
        if bias is None:
            raise DictionaryLoadError(f"{str(where)!r} lacks the decoder bias ('bias' or 'b_dec')")
        expect_shape("decoder bias", bias, (d_in,), where)
        sae = SparseAutoencoder(d_in, d_sae, activation=cls.activation(), k=cls.k_from(state),
                                site=state.config["site"], meta=state.config["meta"])
        fill_sae(sae, tensors["encoder.weight"].T, tensors["encoder.bias"],
                 tensors["decoder.weight"].T, bias)
        return sae

    @classmethod
    def activation(cls) -> str:
        return "relu"

    @classmethod
    def k_from(cls, state: DictionaryState) -> int | None:
        return None

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_sae(dictionary, pre_encoder_bias=True)
        sae: SparseAutoencoder = dictionary  # type: ignore[assignment]
        tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc,
                   "decoder.weight": sae.W_dec.T, "bias": sae.b_dec}
        if sae.k is not None:
            tensors["k"] = torch.tensor(sae.k)
        return DictionaryState(tensors, {"trainer": cls.trainer(sae, k=sae.k)})


class AutoEncoderTopKFormat(AutoEncoderFormat):
    """``AutoEncoderTopK``: ``AutoEncoder`` plus ``k`` (a tensor, or ``trainer.k``)."""

    name = "AutoEncoderTopK"
    stores = ("topk",)

    @classmethod
    def activation(cls) -> str:
        return "topk"

    @classmethod
    def k_from(cls, state: DictionaryState) -> int | None:
        if "k" in state.tensors:
            return int(state.tensors["k"])
        return int(state.config["trainer"]["k"])


class JumpReluAutoEncoderFormat(DictionaryLearningFormat):
    """``JumpReluAutoEncoder``: SAELens orientation plus ``threshold``."""

    name = "JumpReluAutoEncoder"
    stores = ("jumprelu",)

    @classmethod
    def from_state(cls, state: DictionaryState) -> SparseAutoencoder:
        tensors, where, trainer = state.tensors, state.where, state.config["trainer"]
        require_tensors(tensors, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"], where)
        d_in, d_sae = tensors["W_enc"].shape
        sae = SparseAutoencoder(d_in, d_sae, activation="jumprelu",
                                pre_encoder_bias=bool(trainer.get("apply_b_dec_to_input", False)),
                                site=state.config["site"], meta=state.config["meta"])
        expect_shape("W_dec", tensors["W_dec"], (d_sae, d_in), where)
        fill_sae(sae, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
                 tensors["threshold"])
        return sae

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_sae(dictionary, pre_encoder_bias=None)
        sae: SparseAutoencoder = dictionary  # type: ignore[assignment]
        tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec,
                   "b_dec": sae.b_dec, "threshold": sae.threshold}
        trainer = cls.trainer(sae, apply_b_dec_to_input=sae.pre_encoder_bias)
        return DictionaryState(tensors, {"trainer": trainer})


__all__ = [
    "AE_FILE",
    "CONFIG_FILE",
    "AutoEncoderFormat",
    "AutoEncoderTopKFormat",
    "DictionaryLearningFormat",
    "JumpReluAutoEncoderFormat",
    "read_dictionary_learning",
    "site_from_dictionary_learning",
]
