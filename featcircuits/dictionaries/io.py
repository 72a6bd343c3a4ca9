"""Saving and loading dictionaries.

Native format = SAELens' layout, so SAELens can read our SAEs: a folder holding
``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]`` for JumpReLU). Our own keys
sit under ``cfg["featcircuits"]`` (kind, site, constructor config, metadata).

``load_dictionary`` also reads SAELens folders (v6 ``hook_name`` and pre-6.0 ``hook_point`` /
``activation_fn_str`` configs) and dictionary_learning folders (``ae.pt`` + optional
``config.json``; weights transposed with respect to SAELens).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import (
    DictionaryLoadError,
    FeatCircuitsError,
    SiteError,
    WidthMismatchError,
)
from featcircuits.files import atomic_path
from featcircuits.model.sites import Site

FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_LINEAR_KINDS = {cls.kind: cls for cls in (LinearBasis, NeuronBasis, RandomBasis, PCABasis,
                                           ICABasis)}


# ---------------------------------------------------------------------------- save
def save_dictionary(dictionary: Dictionary, path: str | os.PathLike[str]) -> Path:
    """Write ``dictionary`` to folder ``path`` (``cfg.json`` + ``sae_weights.safetensors``).

    Both files are written atomically (temp file, then rename), and both temp files are
    complete and synced before the first rename (``cfg.json``; the weights follow). A crash
    between the two renames leaves the new config, the old weights and the new weights in
    their temp file; ``load_dictionary`` finds the latter by the config's checksum, so a
    reader always gets the old or the new dictionary, never a mix. A ``Transcoder`` is written
    as ``transcoder.safetensors`` in circuit-tracer's layout instead.
    """
    from safetensors.torch import save_file

    from featcircuits.dictionaries.transcoder import Transcoder, save_transcoder

    folder = Path(path)
    if isinstance(dictionary, Transcoder):  # circuit-tracer layout, one file in the folder
        save_transcoder(dictionary, folder / "transcoder.safetensors")
        return folder
    tensors, cfg = _to_saelens(dictionary)
    with atomic_path(folder / WEIGHTS_FILE, sync=False) as weights_tmp:
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()},
                  str(weights_tmp),
                  metadata={"format": "featcircuits", "format_version": str(FORMAT_VERSION)})
        cfg["featcircuits"]["sha256"] = _checksum(weights_tmp.read_bytes(), cfg)
        with atomic_path(folder / CFG_FILE) as cfg_tmp:
            cfg_tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
            with open(weights_tmp, "rb") as handle:  # sync now: the renames follow at once
                os.fsync(handle.fileno())
    return folder


def _checksum(weights: bytes, cfg: dict[str, Any]) -> str:
    """SHA-256 over the weights file and the config (without the checksum itself)."""
    ours = {key: value for key, value in cfg.get("featcircuits", {}).items() if key != "sha256"}
    canonical = json.dumps({**cfg, "featcircuits": ours}, sort_keys=True)
    return hashlib.sha256(weights + canonical.encode("utf-8")).hexdigest()


def _to_saelens(dictionary: Dictionary) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    site = dictionary.site
    hook_name = None
    if site is not None:
        try:
            hook_name = Site.parse(site).to_hook_name()
        except SiteError:
            hook_name = None
    if isinstance(dictionary, SparseAutoencoder):
        tensors = {"W_enc": dictionary.W_enc, "b_enc": dictionary.b_enc,
                   "W_dec": dictionary.W_dec, "b_dec": dictionary.b_dec}
        architecture = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[
            dictionary.activation]
        if dictionary.threshold is not None:
            tensors["threshold"] = dictionary.threshold
        apply_b_dec = dictionary.pre_encoder_bias
    elif isinstance(dictionary, LinearBasis):
        tensors = {"W_enc": dictionary.encoder.T, "b_enc": torch.zeros(dictionary.n_features),
                   "W_dec": dictionary.directions, "b_dec": dictionary.mean}
        if isinstance(dictionary, PCABasis):
            tensors["explained_variance"] = dictionary.explained_variance
        architecture, apply_b_dec = "standard", True
    else:
        raise DictionaryLoadError(
            f"cannot save a {type(dictionary).__name__}",
            hint="subclass SparseAutoencoder or LinearBasis, or save its tensors yourself",
        )
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": dictionary.d_model,
        "d_sae": dictionary.n_features,
        "dtype": "float32",
        "device": "cpu",
        "hook_name": hook_name,
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        "model_name": dictionary.meta.get("model_name"),
        "featcircuits": {
            "format_version": FORMAT_VERSION,
            "kind": dictionary.kind,
            "site": site,
            "config": dictionary.config(),
            "meta": dictionary.meta,
        },
    }
    if architecture == "topk":
        cfg["k"] = dictionary.k
        cfg["activation_fn_kwargs"] = {"k": dictionary.k}
    return tensors, cfg


# ---------------------------------------------------------------------------- load
def load_dictionary(
    path: str | os.PathLike[str],
    *,
    site: str | Site | None = None,
    model=None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dictionary:
    """Load a dictionary from a folder, a transcoder file, or a hub spec.

    Args:
        path: a native/SAELens folder, a dictionary_learning folder (or its ``ae.pt`` /
            ``cfg.json`` file), a circuit-tracer ``layer_L.safetensors`` transcoder, or a spec:
            ``"saelens:<release>/<sae_id>"``, ``"dictionary_learning:<model>/<site>"``,
            ``"circuit_tracer:<repo_id>/layer_L"`` (see ``featcircuits.dictionaries.hub``).
        site: the site it will be used at; overrides the site stored in the file.
        model: if given, the dictionary's width is checked against ``site``'s width.
        cache_dir: where specs are downloaded to / looked up (default ``$FEATCIRCUITS_CACHE``
            or ``~/.cache/featcircuits``).

    Raises:
        DictionaryLoadError: missing, truncated or unrecognised files; an unknown spec; a
            spec whose files are not cached and cannot be downloaded (says what to fetch).
        WidthMismatchError: the dictionary's ``d_in`` differs from the model's width.
    """
    from featcircuits.dictionaries import hub

    if hub.is_spec(path):
        fetched = hub.fetch(str(path), cache_dir=cache_dir)
        dictionary = fetched.adapt(load_dictionary(fetched.path))
        return _finish(dictionary, site, model, device)
    folder = Path(path)
    if folder.is_file() and folder.suffix == ".safetensors" and folder.name != WEIGHTS_FILE:
        return _finish(_transcoder_file(folder), site, model, device)
    if folder.is_dir() and not (folder / WEIGHTS_FILE).is_file() and not (
            folder / "ae.pt").is_file():
        transcoders = [p for p in sorted(folder.glob("*.safetensors"))
                       if p.name == "transcoder.safetensors" or re.match(r"layer_?\d+", p.stem)]
        if len(transcoders) == 1:
            return _finish(_transcoder_file(transcoders[0]), site, model, device)
    if folder.is_file():
        folder = folder.parent
    if not folder.exists():
        raise DictionaryLoadError(f"dictionary path {str(path)!r} does not exist",
                                  hint="pass a folder holding cfg.json + sae_weights.safetensors"
                                  " (SAELens/native) or ae.pt (dictionary_learning)")
    try:
        if (folder / WEIGHTS_FILE).is_file():
            dictionary = _load_saelens(folder)
        elif (folder / "ae.pt").is_file():
            dictionary = _load_dictionary_learning(folder)
        else:
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise DictionaryLoadError(
                f"no dictionary files in {str(folder)!r} (found: {found or 'nothing'})",
                hint=f"expected {CFG_FILE} + {WEIGHTS_FILE} (SAELens/native) or ae.pt "
                "(dictionary_learning)",
            )
    except FeatCircuitsError:
        raise
    except Exception as exc:  # corrupt bytes surface as many exception types
        raise DictionaryLoadError(
            f"could not read the dictionary in {str(folder)!r}: {type(exc).__name__}: {exc}",
            hint="the files may be truncated or corrupt; re-download or re-save them",
        ) from exc
    return _finish(dictionary, site, model, device)


def _finish(dictionary: Dictionary, site, model, device) -> Dictionary:
    dictionary.check_finite()
    if site is not None:
        dictionary.site = str(Site.parse(site))
    if model is not None and dictionary.site is not None:
        check_dictionary_fits(dictionary, model, dictionary.site)
    return dictionary.to(device)


def _transcoder_file(path: Path) -> Dictionary:
    from featcircuits.dictionaries.transcoder import load_transcoder

    return load_transcoder(path)


def check_dictionary_fits(dictionary: Dictionary, model, site: str | Site) -> None:
    """Raise ``WidthMismatchError`` if the dictionary's width differs from the site's, or
    (for a token basis) its vocabulary size from the model's; ``NonFiniteError`` if its
    weights hold NaN/inf."""
    from featcircuits.model.loading import model_config, underlying_module
    from featcircuits.model.sites import d_model

    width = d_model(model)
    trained_on = dictionary.meta.get("model_name")
    origin = f" (it was trained on {trained_on!r})" if trained_on else ""
    if dictionary.d_model != width:
        raise WidthMismatchError(
            f"dictionary {dictionary!r} has width d_in={dictionary.d_model} but site "
            f"{Site.parse(site)} of the model has width {width}{origin}",
            hint="load the dictionary trained for this model and site",
        )
    dictionary.check_finite()
    if dictionary.kind != "tokens":
        return
    embeddings = getattr(underlying_module(model), "get_input_embeddings", lambda: None)()
    vocab = getattr(model_config(model), "vocab_size", None) if embeddings is None else int(
        embeddings.weight.shape[0])
    if vocab is not None and dictionary.n_features != vocab:
        raise WidthMismatchError(
            f"token basis {dictionary!r} has {dictionary.n_features} tokens but the model's "
            f"vocabulary has {vocab}{origin}",
            hint="build it from this model: TokenBasis.from_model(model)",
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DictionaryLoadError(f"{str(path)!r} is missing",
                                  hint=f"save the dictionary again; {path.name} holds its config")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DictionaryLoadError(f"{str(path)!r} is not valid JSON: {exc}",
                                  hint="the file is corrupt; re-download or re-save it") from exc
    if not isinstance(cfg, dict):
        raise DictionaryLoadError(f"{str(path)!r} holds a {type(cfg).__name__}, not an object")
    return cfg


def _require(tensors: dict[str, torch.Tensor], names: list[str], where: Path) -> None:
    missing = [name for name in names if name not in tensors]
    if missing:
        raise DictionaryLoadError(
            f"{str(where)!r} lacks tensors {missing} (has {sorted(tensors)})",
            hint="the file is incomplete or from another library",
        )


def _expect_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...], where: Path) -> None:
    if tuple(tensor.shape) != shape:
        raise DictionaryLoadError(
            f"tensor {name!r} in {str(where)!r} has shape {tuple(tensor.shape)}, expected {shape}",
            hint="the config and the weights disagree; the files may come from different "
            "dictionaries",
        )


def _site_from_hook(hook_name: str | None) -> str | None:
    if not hook_name:
        return None
    try:
        return str(Site.from_hook_name(hook_name))
    except SiteError:
        return None


def _int_field(cfg: dict[str, Any], key: str, where: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DictionaryLoadError(f"{str(where)!r}: {key!r} must be a positive integer, "
                                  f"got {value!r}")
    return value


def _weights_path(folder: Path, cfg: dict[str, Any]) -> Path:
    """The weights file that belongs to ``cfg``: normally ``sae_weights.safetensors``.

    ``save_dictionary`` renames ``cfg.json`` into place first and the weights right after;
    a crash between the two renames leaves the new config beside the old weights, with the
    new weights complete and synced in their temp file ``.sae_weights.safetensors.*.tmp``.
    That file is used only when the config's SHA-256 proves it is the one saved with it.
    """
    main = folder / WEIGHTS_FILE
    ours = cfg.get("featcircuits")
    if not (isinstance(ours, dict) and isinstance(ours.get("sha256"), str)):
        return main
    if _checksum(main.read_bytes(), cfg) == ours["sha256"]:
        return main
    for candidate in sorted(folder.glob(f".{WEIGHTS_FILE}.*.tmp")):
        if _checksum(candidate.read_bytes(), cfg) == ours["sha256"]:
            return candidate
    return main


def _load_saelens(folder: Path) -> Dictionary:
    from safetensors import safe_open
    from safetensors.torch import load_file

    cfg = _read_json(folder / CFG_FILE)
    weights_path = _weights_path(folder, cfg)
    tensors = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    with safe_open(str(weights_path), framework="pt") as handle:
        written_by_us = (handle.metadata() or {}).get("format") == "featcircuits"
    if written_by_us and not isinstance(cfg.get("featcircuits"), dict):
        raise DictionaryLoadError(
            f"{str(folder)!r}: the weights were saved by featcircuits but {CFG_FILE} has no "
            "'featcircuits' section (corrupted or edited)",
            hint="re-save or re-download the dictionary")
    _require(tensors, ["W_enc", "b_enc", "W_dec", "b_dec"], folder / WEIGHTS_FILE)
    d_in, d_sae = _int_field(cfg, "d_in", folder / CFG_FILE), _int_field(cfg, "d_sae",
                                                                        folder / CFG_FILE)
    for name, shape in (("W_enc", (d_in, d_sae)), ("b_enc", (d_sae,)), ("W_dec", (d_sae, d_in)),
                        ("b_dec", (d_in,))):
        _expect_shape(name, tensors[name], shape, folder / WEIGHTS_FILE)
    ours = cfg.get("featcircuits") if isinstance(cfg.get("featcircuits"), dict) else None
    if ours is not None and "sha256" in ours \
            and _checksum(weights_path.read_bytes(), cfg) != ours["sha256"]:
        raise DictionaryLoadError(
            f"{str(folder)!r}: checksum mismatch — {WEIGHTS_FILE} or {CFG_FILE} changed "
            "since it was saved (corrupted or edited)",
            hint="re-save or re-download it; if you edited cfg.json on purpose, delete the "
            "'sha256' entry under 'featcircuits'")
    if ours is not None:
        version = ours.get("format_version")
        if version != FORMAT_VERSION:
            raise DictionaryLoadError(
                f"{str(folder)!r} has featcircuits format_version {version!r}; this version "
                f"reads {FORMAT_VERSION}", hint="upgrade featcircuits or re-save the dictionary")
        site = ours.get("site")
        meta = ours.get("meta") if isinstance(ours.get("meta"), dict) else {}
        kind = ours.get("kind")
        config = ours.get("config") if isinstance(ours.get("config"), dict) else {}
        if kind in _LINEAR_KINDS:
            return _linear_from_tensors(kind, tensors, site, meta, config)
        if kind != "sae":
            raise DictionaryLoadError(f"{str(folder)!r} has unknown dictionary kind {kind!r}",
                                      hint=f"known kinds: sae, {', '.join(_LINEAR_KINDS)}")
    else:
        site = _site_from_hook(cfg.get("hook_name") or cfg.get("hook_point"))
        meta = {"source": "saelens", "hook_name": cfg.get("hook_name") or cfg.get("hook_point"),
                "model_name": cfg.get("model_name")}
        config = None
    normalize = cfg.get("normalize_activations")
    if normalize not in (None, "none"):
        raise DictionaryLoadError(
            f"{str(folder)!r} uses normalize_activations={normalize!r}, which featcircuits "
            "does not apply", hint="use an SAE trained without activation normalisation")
    architecture = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if architecture == "topk" or activation_fn == "topk":
        activation, k = "topk", cfg.get("k", kwargs.get("k"))
    elif architecture == "jumprelu":
        activation, k = "jumprelu", None
        _require(tensors, ["threshold"], folder / WEIGHTS_FILE)
    elif architecture == "standard" and activation_fn == "relu":
        activation, k = "relu", None
    else:
        raise DictionaryLoadError(
            f"{str(folder)!r}: unsupported SAE architecture {architecture!r} / activation "
            f"{activation_fn!r}", hint="featcircuits reads standard (ReLU), topk and jumprelu SAEs")
    tied = bool(config.get("tied")) if config else False
    sae_class = SparseAutoencoder
    if config and config.get("center_input"):
        from featcircuits.dictionaries.centered import CenteredSparseAutoencoder as sae_class
    sae = sae_class(d_in, d_sae, activation=activation, k=k, tied=tied,
                            pre_encoder_bias=bool(cfg.get("apply_b_dec_to_input", True)),
                            site=site, meta=meta)
    _fill_sae(sae, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
              tensors.get("threshold"))
    return sae


def _linear_from_tensors(kind: str, tensors: dict[str, torch.Tensor], site: str | None,
                         meta: dict[str, Any], config: dict[str, Any]) -> LinearBasis:
    encoder, directions, mean = tensors["W_enc"].T, tensors["W_dec"], tensors["b_dec"]
    if kind == "pca":
        basis = PCABasis(encoder, mean, tensors.get("explained_variance"), site=site, meta=meta)
    elif kind == "ica":
        basis = ICABasis(encoder, mean, directions.T, site=site, meta=meta)
    elif kind == "neuron":
        basis = NeuronBasis(encoder.shape[1], site=site, meta=meta)
    elif kind == "random":
        basis = RandomBasis(encoder.shape[1], seed=int(config.get("seed", 0)), mean=mean,
                            n_features=encoder.shape[0], site=site, meta=meta)
    else:
        basis = LinearBasis(encoder, directions, mean, site=site, meta=meta)
    # neuron and random bases are rebuilt from their config; stored tensors must agree
    if kind in ("neuron", "random") and not (
            torch.equal(basis.encoder, encoder) and torch.equal(basis.directions, directions)):
        raise DictionaryLoadError(f"stored {kind} basis does not match its config",
                                  hint="the file was edited or is corrupt")
    return basis


@torch.no_grad()
def _fill_sae(sae: SparseAutoencoder, W_enc, b_enc, W_dec, b_dec, threshold=None) -> None:
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc)
    sae.b_dec.copy_(b_dec)
    if sae.tied:
        if not torch.equal(W_dec, W_enc.T):
            raise DictionaryLoadError("config says the SAE is tied but W_dec != W_enc.T",
                                      hint="the file is corrupt or was edited")
    else:
        sae.W_dec_untied.copy_(W_dec)
    if threshold is not None:
        if sae.threshold is None:
            raise DictionaryLoadError("a threshold tensor was stored for a non-JumpReLU SAE")
        sae.threshold.copy_(threshold)


_DL_SUBMODULE = re.compile(r"(resid_post|resid_out|mlp_out|attn_out|resid_pre)_layer_?(\d+)")


def _site_from_dictionary_learning(name: str | None) -> str | None:
    if not name:
        return None
    match = _DL_SUBMODULE.search(name)
    if match is None:
        return "embed" if "embed" in name else None
    kind = {"resid_post": "resid_out", "resid_pre": "resid_in"}.get(match.group(1), match.group(1))
    return f"{kind}.{int(match.group(2))}"


def _load_dictionary_learning(folder: Path) -> SparseAutoencoder:
    state = torch.load(folder / "ae.pt", map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DictionaryLoadError(f"{str(folder / 'ae.pt')!r} is not a state dict of tensors")
    trainer: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        trainer = _read_json(folder / "config.json").get("trainer") or {}
        if not isinstance(trainer, dict):
            raise DictionaryLoadError(f"{str(folder / 'config.json')!r}: 'trainer' is not an object")
    site = (_site_from_dictionary_learning(trainer.get("submodule_name"))
            or (f"resid_out.{trainer['layer']}" if isinstance(trainer.get("layer"), int) else None)
            or _site_from_dictionary_learning(str(folder)))
    meta = {"source": "dictionary_learning", "dict_class": trainer.get("dict_class"),
            "model_name": trainer.get("lm_name")}
    state = {k: v.float() for k, v in state.items()}
    where = folder / "ae.pt"
    if "W_enc" in state:  # JumpReluAutoEncoder: SAELens orientation
        _require(state, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"], where)
        d_in, d_sae = state["W_enc"].shape
        sae = SparseAutoencoder(d_in, d_sae, activation="jumprelu",
                                pre_encoder_bias=bool(trainer.get("apply_b_dec_to_input", False)),
                                site=site, meta=meta)
        _expect_shape("W_dec", state["W_dec"], (d_sae, d_in), where)
        _fill_sae(sae, state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"],
                  state["threshold"])
        return sae
    _require(state, ["encoder.weight", "encoder.bias", "decoder.weight"], where)
    d_sae, d_in = state["encoder.weight"].shape
    _expect_shape("decoder.weight", state["decoder.weight"], (d_in, d_sae), where)
    _expect_shape("encoder.bias", state["encoder.bias"], (d_sae,), where)
    bias = state.get("bias", state.get("b_dec"))
    if bias is None:
        raise DictionaryLoadError(f"{str(where)!r} lacks the decoder bias ('bias' or 'b_dec')")
    _expect_shape("decoder bias", bias, (d_in,), where)
    if "k" in state or trainer.get("k") is not None:
        k = int(state["k"]) if "k" in state else int(trainer["k"])
        sae = SparseAutoencoder(d_in, d_sae, activation="topk", k=k, site=site, meta=meta)
    else:
        sae = SparseAutoencoder(d_in, d_sae, activation="relu", site=site, meta=meta)
    _fill_sae(sae, state["encoder.weight"].T, state["encoder.bias"], state["decoder.weight"].T,
              bias)
    return sae


def load_dictionaries(folder: str | os.PathLike[str], *, model=None,
                      device: str | torch.device = "cpu",
                      cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Dictionary]:
    """Load every dictionary in the sub-folders of ``folder``, keyed by site name.

    Sub-folders are named by site (``resid_out.0``, ``resid_out.1``, ...) or hold the site in
    their config. ``folder`` may also be a spec naming a set, e.g.
    ``"dictionary_learning:pythia-70m-deduped"`` or ``"saelens:gpt2-small-res-jb"``.
    """
    from featcircuits.dictionaries import hub

    if hub.is_spec(folder):
        loaded = [load_dictionary(spec, model=model, device=device, cache_dir=cache_dir)
                  for spec in hub.expand(str(folder))]
        by_site: dict[str, Dictionary] = {}
        for dictionary in loaded:
            name = str(Site.parse(dictionary.site))
            if name in by_site:
                raise DictionaryLoadError(
                    f"{str(folder)!r} holds several dictionaries at site {name}",
                    hint="load them one by one with load_dictionary('<spec>/<id>')")
            by_site[name] = dictionary
        return dict(sorted(by_site.items(), key=lambda item: Site.parse(item[0]).depth))
    root = Path(folder)
    if not root.is_dir():
        raise DictionaryLoadError(f"dictionary folder {str(folder)!r} does not exist")
    dictionaries: dict[str, Dictionary] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        dictionary = load_dictionary(sub, model=model, device=device)
        site = dictionary.site or sub.name
        dictionary.site = str(Site.parse(site))
        dictionaries[dictionary.site] = dictionary
    if not dictionaries:
        raise DictionaryLoadError(f"no dictionaries found under {str(folder)!r}",
                                  hint="each sub-folder should hold one saved dictionary")
    return dict(sorted(dictionaries.items(), key=lambda item: Site.parse(item[0]).depth))
