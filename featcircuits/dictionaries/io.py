"""Saving and loading dictionaries: the public entry points.

Native format = SAELens' layout, so SAELens can read our SAEs: a folder holding
``cfg.json`` and ``sae_weights.safetensors`` (see ``featcircuits.dictionaries.saelens``).
``load_dictionary`` also reads SAELens folders (v6 and pre-6.0 configs), dictionary_learning
folders (``ae.pt`` + optional ``config.json``) and circuit-tracer transcoder files.

Which files a path holds picks the layout; the layout names the architecture; the
architecture's class in ``featcircuits.dictionaries.registry.FORMATS`` builds the
dictionary. ``save_dictionary`` writes with the class of ``dictionary.architecture``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.cross_layer import (
    is_cross_layer_folder,
    load_cross_layer_transcoder,
)
from featcircuits.dictionaries.dictionary_learning import AE_FILE, read_dictionary_learning
from featcircuits.dictionaries.formats import DictionaryState
from featcircuits.dictionaries.registry import dictionary_format, format_of
from featcircuits.dictionaries.saelens import (
    CFG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    read_saelens,
)
from featcircuits.dictionaries.scope import (
    is_gemma_scope,
    is_llama_scope,
    is_llama_scope_r1,
    read_scope,
)
from featcircuits.dictionaries.transcoder import (
    read_circuit_tracer,
    transcoder_set_files,
)
from featcircuits.errors import (
    DictionaryLoadError,
    FeatCircuitsError,
    SiteError,
    WidthMismatchError,
)
from featcircuits.model.sites import Site
from featcircuits.writes import committed_path

Layout = Callable[[Path], tuple[Any, DictionaryState]]


# ---------------------------------------------------------------------------- save
def save_dictionary(dictionary: Dictionary, path: str | os.PathLike[str]) -> Path:
    """Write ``dictionary`` to folder ``path`` in the format of its ``architecture``.

    SAEs and linear bases: ``cfg.json`` + ``sae_weights.safetensors``, written as one set
    (``featcircuits.writes.atomic_files``): a kill at any moment leaves the old dictionary
    or the new one for ``load_dictionary``, never a mix, and both files get the same mode
    (``0o666 & ~umask``). A ``Transcoder`` is written as ``transcoder.safetensors`` in
    circuit-tracer's layout instead.

    Raises:
        DictionaryLoadError: the dictionary has no registered file format (a ``TokenBasis``).
        OutputError: the folder cannot be written, or the disk is full (the old files stay).
    """
    return format_of(dictionary).save(dictionary, Path(path))


# ---------------------------------------------------------------------------- load
def load_dictionary(
    path: str | os.PathLike[str],
    *,
    site: str | Site | None = None,
    model=None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Dictionary:
    """Load a dictionary from a folder, a transcoder file, or a hub spec.

    Args:
        path: a native/SAELens folder, a dictionary_learning folder (or its ``ae.pt`` /
            ``cfg.json`` file), a circuit-tracer ``layer_L.safetensors`` transcoder, a Gemma
            Scope or Llama Scope SAE folder (``featcircuits.dictionaries.scope``), or a spec:
            ``"saelens:<release>/<sae_id>"``, ``"dictionary_learning:<model>/<site>"``,
            ``"circuit_tracer:<repo_id>/layer_L"`` (see ``featcircuits.dictionaries.hub``).
        site: the site it will be used at; overrides the site stored in the file.
        model: if given, the dictionary's width is checked against ``site``'s width.
        cache_dir: where specs are downloaded to / looked up (default ``$FEATCIRCUITS_CACHE``
            or ``~/.cache/featcircuits``).
        progress: show featcircuits' progress bar while a spec's files are unpacked
            (``False`` for quiet runs; huggingface_hub's download bars follow its own switch).

    Raises:
        DictionaryLoadError: missing, truncated or unrecognised files; an unknown spec; a
            spec whose files are not cached and cannot be downloaded (says what to fetch).
        WidthMismatchError: the dictionary's ``d_in`` differs from the model's width.
    """
    from featcircuits.dictionaries import hub

    if hub.is_spec(path):
        fetched = hub.fetch(str(path), cache_dir=cache_dir, progress=progress)
        dictionary = fetched.adapt(load_dictionary(fetched.path))
        return _finish(dictionary, site, model, device)
    folder = Path(path)
    if folder.is_file() and re.fullmatch(r"W_(enc|dec)_\d+", folder.stem) and \
            is_cross_layer_folder(folder.parent):
        folder = folder.parent  # one layer's file of a cross-layer transcoder: refused below
    if folder.is_file() and folder.suffix == ".safetensors" and folder.name != WEIGHTS_FILE:
        return _finish(_read(read_circuit_tracer, folder), site, model, device)
    if folder.is_dir() and not committed_path(folder / WEIGHTS_FILE).is_file() and not \
            committed_path(folder / AE_FILE).is_file():
        if is_cross_layer_folder(folder):
            raise DictionaryLoadError(
                f"{str(folder)!r} holds a circuit-tracer cross-layer transcoder: one "
                "dictionary per read layer, whose features write several sites, not one "
                "dictionary",
                hint="load_dictionaries(folder) returns {mlp_out.L: CrossLayerFeatures}; "
                "featcircuits.dictionaries.load_cross_layer_transcoder(folder) the whole")
        transcoders = [p for p in sorted(folder.glob("*.safetensors"))
                       if p.name == "transcoder.safetensors" or re.match(r"layer_?\d+", p.stem)]
        if len(transcoders) == 1:
            return _finish(_read(read_circuit_tracer, transcoders[0]), site, model, device)
        if len(transcoders) > 1:
            raise DictionaryLoadError(
                f"{str(folder)!r} holds {len(transcoders)} transcoders (a circuit-tracer "
                "transcoder set), not one dictionary",
                hint="load_dictionaries(folder) returns them as {site: transcoder}; or pass "
                "one layer_L.safetensors file")
    if folder.is_file():
        folder = folder.parent
    if not folder.exists():
        raise DictionaryLoadError(f"dictionary path {str(path)!r} does not exist",
                                  hint="pass a folder holding cfg.json + sae_weights.safetensors"
                                  " (SAELens/native) or ae.pt (dictionary_learning)")
    try:
        if is_llama_scope_r1(folder):  # config.json + sae_weights.safetensors, no cfg.json
            dictionary = read_scope(folder)
        elif committed_path(folder / WEIGHTS_FILE).is_file():
            dictionary = _read(read_saelens, folder)
        elif committed_path(folder / AE_FILE).is_file():
            dictionary = _read(read_dictionary_learning, folder)
        elif is_gemma_scope(folder) or is_llama_scope(folder):
            dictionary = read_scope(folder)
        else:
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise DictionaryLoadError(
                f"no dictionary files in {str(folder)!r} (found: {found or 'nothing'})",
                hint=f"expected {CFG_FILE} + {WEIGHTS_FILE} (SAELens/native), ae.pt "
                "(dictionary_learning), params.npz (Gemma Scope) or hyperparams.json + "
                "checkpoints/final.safetensors (Llama Scope)",
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


def _read(layout: Layout, path: Path) -> Dictionary:
    """Read ``path`` with ``layout``, then build with its architecture's format."""
    architecture, state = layout(path)
    return dictionary_format(architecture, state.where).from_state(state)


def check_dictionary_fits(dictionary: Dictionary, model, site: str | Site) -> None:
    """Raise ``WidthMismatchError`` if the dictionary's width differs from the site's, or
    (for a token basis) its vocabulary size from the model's; ``NonFiniteError`` if its
    weights hold NaN/inf."""
    from featcircuits.model.loading import model_config, underlying_module

    width = Site.parse(site).width(model)
    trained_on = dictionary.meta.get("model_name")
    origin = f" (it was trained on {trained_on!r})" if trained_on else ""
    if dictionary.d_model != width:
        raise WidthMismatchError(
            f"dictionary {dictionary!r} has width d_in={dictionary.d_model} but site "
            f"{Site.parse(site)} of the model has width {width}{origin}",
            hint="load the dictionary trained for this model and site",
        )
    dictionary.check_finite()
    _check_hook_embed(dictionary, model, site)
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


def _check_hook_embed(dictionary: Dictionary, model, site: str | Site) -> None:
    """``SiteError`` for a dictionary trained at TransformerLens' ``hook_embed`` used at
    ``embed`` of a Gemma model whose embedding module does not scale by ``sqrt(d_model)``
    (transformers 4; TransformerLens' Gemma ``hook_embed`` is scaled): it would read another
    tensor than it was trained on. (GPT-2's ``embed`` is the token embedding alone, as
    ``hook_embed``.)"""
    from featcircuits.model.loading import model_config, underlying_module

    hook = dictionary.meta.get("hook_name")
    if hook not in ("hook_embed", "embed.hook_embed") or Site.parse(site).kind != "embed":
        return
    model_type = str(getattr(model_config(model), "model_type", None))
    embeddings = getattr(underlying_module(model), "get_input_embeddings", lambda: None)()
    if model_type.startswith("gemma") and getattr(embeddings, "embed_scale", None) is None:
        raise SiteError(
            f"dictionary {dictionary!r} was trained at TransformerLens' {hook} (Gemma's token "
            "embedding times sqrt(d_model)), but this model's embedding module returns the "
            "embedding before Gemma scales it (transformers 4 scales after the module), so "
            "featcircuits' 'embed' site holds a tensor sqrt(d_model) times smaller",
            hint="use transformers >= 5, whose Gemma embedding module scales, or a dictionary "
            "trained at blocks.0.hook_resid_pre (site resid_in.0)")


def load_dictionaries(folder: str | os.PathLike[str], *, model=None,
                      device: str | torch.device = "cpu",
                      cache_dir: str | os.PathLike[str] | None = None,
                      progress: bool = True) -> dict[str, Dictionary]:
    """Load every dictionary in the sub-folders of ``folder``, keyed by site name.

    Sub-folders are named by site (``resid_out.0``, ``resid_out.1``, ...) or hold the site in
    their config. A circuit-tracer transcoder-set folder (``config.yaml`` + one
    ``layer_L.safetensors`` per layer) loads as ``{output site: transcoder}``, the sites from
    ``config.yaml``'s ``feature_input_hook`` / ``feature_output_hook``; a cross-layer
    transcoder folder (``W_enc_L`` / ``W_dec_L`` files) loads as ``{mlp_out.L:
    CrossLayerFeatures}``, one per read layer (``featcircuits.dictionaries.cross_layer``).
    ``folder`` may also be a spec naming a set, e.g.
    ``"dictionary_learning:pythia-70m-deduped"`` or ``"saelens:gpt2-small-res-jb"``;
    ``progress`` as in :func:`load_dictionary`.
    """
    from featcircuits.dictionaries import hub

    if hub.is_spec(folder):
        loaded = [load_dictionary(spec, model=model, device=device, cache_dir=cache_dir,
                                  progress=progress)
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
    if is_cross_layer_folder(root):
        layers = load_cross_layer_transcoder(root).dictionaries()
        return {site: _finish(layer, None, model, device) for site, layer in layers.items()}
    dictionaries: dict[str, Dictionary] = {}
    for path in transcoder_set_files(root):  # a circuit-tracer transcoder set (+ config.yaml)
        transcoder = load_dictionary(path, model=model, device=device)
        if transcoder.site in dictionaries:
            raise DictionaryLoadError(f"{str(root)!r}: two transcoders write {transcoder.site}",
                                      hint="each layer_L.safetensors must write its own site")
        dictionaries[str(transcoder.site)] = transcoder
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        dictionary = load_dictionary(sub, model=model, device=device)
        site = dictionary.site or sub.name
        dictionary.site = str(Site.parse(site))
        dictionaries[dictionary.site] = dictionary
    if not dictionaries:
        raise DictionaryLoadError(f"no dictionaries found under {str(folder)!r}",
                                  hint="each sub-folder should hold one saved dictionary")
    return dict(sorted(dictionaries.items(), key=lambda item: Site.parse(item[0]).depth))


__all__ = [
    "CFG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "check_dictionary_fits",
    "load_dictionaries",
    "load_dictionary",
    "save_dictionary",
]
