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
import os
import re
from pathlib import Path
from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.filechecks import check_declared, check_torch_archive
from featcircuits.dictionaries.formats import (
    DictionaryFormat,
    DictionaryState,
    expect_shape,
    fill_sae,
    json_bool,
    positive_int,
    read_json,
    require_tensors,
)
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import DictionaryError, DictionaryLoadError
from featcircuits.model.sites import Site
from featcircuits.writes import atomic_files, committed_path

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
    is ``trainer`` plus the ``site``, ``meta`` and (TopK family) ``k`` it implies.

    The class is ``trainer.dict_class`` when ``config.json`` names it, else it is told apart
    by the tensors (``infer_class``). The archive is checked (``filechecks.check_torch_archive``)
    and memory-mapped, and every tensor's name, dtype and shape is checked against the class
    (its format's ``tensor_shapes``) and ``config.json`` before any is converted to float:
    extra tensors (a ``threshold`` beside a ReLU SAE), integer or complex weights and a ``k``
    that is not a positive whole number are refused, with the class named.
    """
    from featcircuits.dictionaries.registry import FORMATS

    path = committed_path(folder / AE_FILE)
    check_torch_archive(path)
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DictionaryLoadError(f"{str(path)!r} is not a state dict of tensors")
    trainer: dict[str, Any] = {}
    config = committed_path(folder / CONFIG_FILE)
    if os.path.lexists(config):  # a FIFO or a link to a device is refused
        trainer = read_json(config).get("trainer") or {}
        if not isinstance(trainer, dict):
            raise DictionaryLoadError(f"{str(folder / CONFIG_FILE)!r}: 'trainer' is not an object")
    site = (site_from_dictionary_learning(trainer.get("submodule_name"))
            or (f"resid_out.{trainer['layer']}" if isinstance(trainer.get("layer"), int) else None)
            or site_from_dictionary_learning(str(folder)))
    meta = {"source": "dictionary_learning", "dict_class": trainer.get("dict_class"),
            "trainer_class": trainer.get("trainer_class"), "model_name": trainer.get("lm_name")}
    k = _k(state, trainer, folder)
    architecture = trainer.get("dict_class") or infer_class(state, k, folder)
    fmt = FORMATS.get(architecture) if isinstance(architecture, str) else None
    if fmt is None or fmt.layout != "dictionary_learning":
        known = [name for name, f in FORMATS.items() if f.layout == "dictionary_learning"]
        raise DictionaryLoadError(
            f"{str(folder / CONFIG_FILE)!r}: dictionary_learning class {architecture!r} is not "
            "read by featcircuits", hint=f"it reads {', '.join(known)}")
    if k is not None:
        meta["k"] = k
    try:
        _check_tensors(state, trainer, fmt, path)
    except DictionaryLoadError as exc:
        raise DictionaryLoadError(f"dictionary_learning {architecture}: {exc.message}",
                                  hint=exc.hint) from exc
    tensors = {name: v if fmt.integer_tensor(name) else v.float()  # type: ignore[attr-defined]
               for name, v in state.items()}
    config = {"trainer": trainer, "site": site, "meta": meta, "k": k}
    return architecture, DictionaryState(tensors, config, path)


def infer_class(state: dict[str, torch.Tensor], k: int | None, folder: Path) -> str:
    """The class of an ``ae.pt`` without ``config.json``'s ``dict_class``, from its tensors."""
    if "W_enc" in state:
        return "MatryoshkaBatchTopKSAE" if "group_sizes" in state else "JumpReluAutoEncoder"
    if "gate_bias" in state:
        return "GatedAutoEncoder"
    if "decoder.bias" in state:
        return "AutoEncoderNew"
    if k is None:
        return "AutoEncoder"
    if "threshold" in state:
        raise DictionaryLoadError(
            f"{str(folder)!r}: ae.pt holds 'k' and 'threshold', the tensors of both "
            "AutoEncoderTopK (per-row top-k) and BatchTopKSAE (encodes with the threshold); "
            "they compute different features and there is no config.json naming the class",
            hint='add config.json with {"trainer": {"dict_class": "BatchTopKSAE"}} (or '
            '"AutoEncoderTopK")')
    return "AutoEncoderTopK"


def _k(state: dict[str, torch.Tensor], trainer: dict[str, Any], folder: Path) -> int | None:
    """TopK's ``k`` from the ``k`` tensor and/or ``trainer.k`` (they must agree)."""
    values = []
    if "k" in state:
        tensor = state["k"]
        if (tensor.dtype.is_floating_point or tensor.dtype.is_complex
                or tensor.dtype == torch.bool or tensor.numel() != 1):
            raise DictionaryLoadError(
                f"{str(folder / AE_FILE)!r}: tensor 'k' must hold one integer, got "
                f"{tensor.dtype} of shape {tuple(tensor.shape)}",
                hint="the file is corrupt or was written by other code")
        values.append(positive_int(int(tensor.reshape(-1)[0]), "tensor 'k'", folder / AE_FILE))
    if trainer.get("k") is not None:
        values.append(positive_int(trainer["k"], "'trainer.k'", folder / CONFIG_FILE))
    if len(set(values)) > 1:
        raise DictionaryLoadError(f"{str(folder)!r}: tensor 'k' is {values[0]} but "
                                  f"config.json's trainer.k is {values[1]}",
                                  hint="the files come from different dictionaries")
    return values[0] if values else None


def _check_tensors(state: dict[str, torch.Tensor], trainer: dict[str, Any],
                   fmt: Any, path: Path) -> None:
    """Names, dtypes and shapes of ``state`` against the class and ``trainer``'s
    ``activation_dim`` / ``dict_size``, before any tensor is read."""
    main, transposed = fmt.main_tensor
    if main not in state or state[main].ndim != 2:
        shape = tuple(state[main].shape) if main in state else None
        raise DictionaryLoadError(f"{str(path)!r}: {main!r} must be a matrix, got shape {shape} "
                                  f"(has {sorted(state)})",
                                  hint="the file is incomplete or from another library")
    d_in, d_sae = reversed(state[main].shape) if transposed else state[main].shape
    where = path.parent / CONFIG_FILE
    if trainer.get("activation_dim") is not None:
        d_in = positive_int(trainer["activation_dim"], "'trainer.activation_dim'", where)
    if trainer.get("dict_size") is not None:
        d_sae = positive_int(trainer["dict_size"], "'trainer.dict_size'", where)
    required, optional = fmt.tensor_shapes(state, int(d_in), int(d_sae))
    declared = {name: (str(t.dtype).removeprefix("torch."), tuple(t.shape))
                for name, t in state.items()}
    check_declared(path, declared, required=required, optional=optional,
                   integer=[name for name in declared if fmt.integer_tensor(name)])


class DictionaryLearningFormat(DictionaryFormat):
    """Base of dictionary_learning's classes: ``write`` stores ``ae.pt`` + ``config.json``.

    Subclasses say which tensor fixes the widths (``main_tensor``: name, and whether it is
    ``[d_sae, d_in]``), which tensors the class stores (``tensor_shapes``) and which are
    integers (``integer_tensor``).
    """

    layout = "dictionary_learning"
    stores: tuple[str, ...] = ()  # the featcircuits architectures it stores without loss
    main_tensor: tuple[str, bool] = ("encoder.weight", True)

    @classmethod
    def tensor_shapes(cls, state: dict[str, torch.Tensor], d_in: int, d_sae: int
                      ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """``(required, optional)`` shapes of ``ae.pt``'s tensors."""
        raise NotImplementedError

    @classmethod
    def integer_tensor(cls, name: str) -> bool:
        """Whether tensor ``name`` holds integers (``k``, ``group_sizes``)."""
        return name in ("k", "group_sizes")

    @classmethod
    def write(cls, state: DictionaryState, folder: Path) -> Path:
        tensors = {name: t.detach().cpu().contiguous() for name, t in state.tensors.items()}
        with atomic_files(folder) as files:  # one set: the old pair or the new pair
            torch.save(tensors, files.path(AE_FILE, size=sum(
                t.numel() * t.element_size() for t in tensors.values())))
            files.path(CONFIG_FILE).write_text(json.dumps(
                {"trainer": state.config["trainer"]}, indent=2, sort_keys=True),
                encoding="utf-8")
        return folder

    @classmethod
    def trainer(cls, sae: Dictionary, **extra: Any) -> dict[str, Any]:
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


def linear_shapes(state: dict[str, torch.Tensor], d_in: int, d_sae: int, *, bias: str | None
                  ) -> dict[str, tuple[int, ...]]:
    """``encoder.weight``, ``encoder.bias``, ``decoder.weight`` and the decoder bias
    ``bias`` (``None``: ``bias`` or ``b_dec``, whichever the state has)."""
    if bias is None:
        bias = "b_dec" if "b_dec" in state and "bias" not in state else "bias"
    return {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,),
            "decoder.weight": (d_in, d_sae), bias: (d_in,)}


def unit_decoder(decoder_weight: torch.Tensor) -> bool:
    """Whether ``decoder.weight [d_in, d_sae]``'s columns have unit norm, by the test
    ``AutoEncoder.normalize_decoder`` uses (``torch.allclose`` with default tolerances)."""
    norms = decoder_weight.norm(dim=0)
    return bool(torch.allclose(norms, torch.ones_like(norms)))


class AutoEncoderFormat(DictionaryLearningFormat):
    """``AutoEncoder``: a ReLU SAE in ``torch.nn.Linear`` orientation.

    dictionary_learning's loader (``AutoEncoder.from_pretrained``, default
    ``normalize_decoder=True``) rescales decoder columns to unit norm and the encoder to
    match, unless they already are; features then come out in those units (reconstructions
    are unchanged). Reading does the same, so features equal the peer's. An SAE whose
    decoder rows are not unit norm is refused at save time, since the peer would rescale it.
    """

    name = "AutoEncoder"
    stores = ("standard",)

    @classmethod
    def tensor_shapes(cls, state, d_in, d_sae):
        return linear_shapes(state, d_in, d_sae, bias=None), {}

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
        if cls.normalizes_on_load() and not unit_decoder(tensors["decoder.weight"]):
            sae.normalize_decoder()
            sae.meta["decoder_normalized_on_load"] = True
        return sae

    @classmethod
    def normalizes_on_load(cls) -> bool:
        """Whether the peer's loader rescales decoder columns to unit norm."""
        return True

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
        if cls.normalizes_on_load() and not unit_decoder(sae.W_dec.detach().T):
            raise DictionaryError(
                f"dictionary_learning's AutoEncoder cannot store {sae!r}: its decoder rows are "
                "not unit norm, and dictionary_learning's loader rescales them (features would "
                "come back in other units)",
                hint="call sae.normalize_decoder() first (same reconstructions), or save it "
                "with save_dictionary")
        tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc,
                   "decoder.weight": sae.W_dec.T, "bias": sae.b_dec}
        if sae.k is not None:
            tensors["k"] = torch.tensor(sae.k)
        return DictionaryState(tensors, {"trainer": cls.trainer(sae, k=sae.k)})


class AutoEncoderTopKFormat(AutoEncoderFormat):
    """``AutoEncoderTopK``: ``AutoEncoder`` plus ``k`` (a tensor, or ``trainer.k``) and an
    inference ``threshold`` its ``encode`` does not use by default (per-row top-k of the
    ReLU'd pre-activations; ``from_pretrained`` does not rescale the decoder)."""

    name = "AutoEncoderTopK"
    stores = ("topk",)

    @classmethod
    def tensor_shapes(cls, state, d_in, d_sae):
        return (linear_shapes(state, d_in, d_sae, bias=None),
                {"k": tuple(state["k"].shape) if "k" in state else (), "threshold": ()})

    @classmethod
    def normalizes_on_load(cls) -> bool:
        return False

    @classmethod
    def activation(cls) -> str:
        return "topk"

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        """As dictionary_learning's ``AutoEncoderTopK`` state dict: ``b_dec``, ``k`` (int32)
        and its inference ``threshold`` buffer at the class's initial -1 (unused by
        ``encode``'s default per-row top-k), so ``load_state_dict`` finds every key."""
        cls.check_sae(dictionary, pre_encoder_bias=True)
        sae: SparseAutoencoder = dictionary  # type: ignore[assignment]
        tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc,
                   "decoder.weight": sae.W_dec.T, "b_dec": sae.b_dec,
                   "k": torch.tensor(sae.k, dtype=torch.int32), "threshold": torch.tensor(-1.0)}
        return DictionaryState(tensors, {"trainer": cls.trainer(sae, k=sae.k)})

    @classmethod
    def k_from(cls, state: DictionaryState) -> int | None:
        if state.config.get("k") is not None:
            return state.config["k"]
        return _k(state.tensors, state.config["trainer"], (state.where or Path(AE_FILE)).parent)


class JumpReluAutoEncoderFormat(DictionaryLearningFormat):
    """``JumpReluAutoEncoder``: SAELens orientation plus ``threshold``; encodes
    ``relu(pre * (pre > threshold))`` (= featcircuits' ``jumprelu``)."""

    name = "JumpReluAutoEncoder"
    stores = ("jumprelu",)
    main_tensor = ("W_enc", False)

    @classmethod
    def tensor_shapes(cls, state, d_in, d_sae):
        return ({"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
                 "b_dec": (d_in,), "threshold": (d_sae,)}, {})

    @classmethod
    def from_state(cls, state: DictionaryState) -> SparseAutoencoder:
        tensors, where, trainer = state.tensors, state.where, state.config["trainer"]
        require_tensors(tensors, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"], where)
        d_in, d_sae = tensors["W_enc"].shape
        sae = SparseAutoencoder(d_in, d_sae, activation="jumprelu",
                                pre_encoder_bias=json_bool(
                                    trainer, "apply_b_dec_to_input", False,
                                    (where or Path(AE_FILE)).parent / CONFIG_FILE),
                                site=state.config["site"], meta=state.config["meta"])
        expect_shape("W_dec", tensors["W_dec"], (d_sae, d_in), where)
        fill_sae(sae, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
                 tensors["threshold"])
        return sae

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_sae(dictionary, pre_encoder_bias=None)
        sae: SparseAutoencoder = dictionary  # type: ignore[assignment]
        b_enc = sae.b_enc.detach()
        if sae.pre_encoder_bias:
            # dictionary_learning's loader always sets apply_b_dec_to_input=False; folding
            # b_dec into b_enc gives the same pre-activations without it
            b_enc = b_enc - sae.b_dec.detach() @ sae.W_enc.detach()
        tensors = {"W_enc": sae.W_enc, "b_enc": b_enc, "W_dec": sae.W_dec,
                   "b_dec": sae.b_dec, "threshold": sae.threshold}
        trainer = cls.trainer(sae, apply_b_dec_to_input=False)
        return DictionaryState(tensors, {"trainer": trainer})


__all__ = [
    "AE_FILE",
    "CONFIG_FILE",
    "AutoEncoderFormat",
    "AutoEncoderTopKFormat",
    "DictionaryLearningFormat",
    "JumpReluAutoEncoderFormat",
    "infer_class",
    "linear_shapes",
    "read_dictionary_learning",
    "site_from_dictionary_learning",
    "unit_decoder",
]
