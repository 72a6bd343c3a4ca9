"""Gemma Scope and Llama Scope folders, read exactly as SAELens 6 converts them.

Both are JumpReLU SAEs published in their own layouts, which SAELens converts on loading
(``conversion_func`` ``gemma_2`` and ``llama_scope`` in its ``pretrained_saes.yaml``). The
readers here turn such a folder into the state SAELens builds (its ``cfg`` and state dict),
which the registry's ``jumprelu`` format then loads: ``relu(pre) * (pre > threshold)`` with
``pre = x @ W_enc + b_enc`` (no ``b_dec`` subtracted first).

**Gemma Scope** (``google/gemma-scope-<size>-<pt|it>-<res|mlp|att>``, one folder per SAE such
as ``layer_3/width_16k/average_l0_50``) holds ``params.npz`` with ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold`` (a key ``w_*`` is read as
``W_*``). A ``scaling_factor`` of ones is dropped, any other value refused (SAELens refuses it
too). Folders under ``embedding/`` are rescaled as SAELens does: ``W_enc / sqrt(d_in)``,
``W_dec * sqrt(d_in)``. The hook comes from the repo name (``res``:
``blocks.L.hook_resid_post``, or ``hook_embed`` under ``embedding/``; ``mlp``:
``blocks.L.hook_mlp_out``; ``att``: ``blocks.L.attn.hook_z``), found in the folder's path (the
featcircuits cache, huggingface_hub's cache or a ``--local-dir`` named after the repo) or
passed by the hub.

**Llama Scope** (``fnlp/Llama3_1-8B-Base-LX<A|M|R>-<8|32>x``, one folder per SAE such as
``Llama3_1-8B-Base-L3R-8x``) holds ``hyperparams.json`` and ``checkpoints/final.safetensors``
(``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``decoder.weight [d_in, d_sae]``,
``decoder.bias``; other tensors are ignored, as SAELens ignores them). The SAE was trained on
inputs scaled by ``f = sqrt(d_model) / dataset_average_activation_norm["in"]``; SAELens
sets every feature's threshold to ``jump_relu_threshold * f`` and folds the release table's
``norm_scaling_factor`` ``F`` into the weights (``W_enc * F``, ``W_dec / F``, ``b_dec / F``),
so the SAE reads and writes raw activations. A local folder is folded with ``F = f`` (the
table's value where it is known: the hub passes it, see :func:`refold`).

**Llama Scope R1-Distill** (``fnlp/Llama-Scope-R1-Distill``, folders such as
``800M-Slimpajama-0-OpenR1-Math-220k/L3R``) holds ``config.json`` (``d_model``,
``expansion_factor``, ``hook_point_in``) and ``sae_weights.safetensors`` with the tensors above
plus ``log_jumprelu_threshold``: threshold ``exp(log_jumprelu_threshold)``, weights folded
with the table's ``norm_scaling_factor`` only. A local folder knows no factor and loads
unfolded (``F = 1``, what SAELens computes when its table has none), with
``meta["normalize_activations"] = "expected_average_only_in"`` saying the inputs it expects
are scaled; the spec folds the table's factor.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from featcircuits.dictionaries.filechecks import (
    check_declared,
    check_memory,
    read_safetensors_header,
    regular_file,
)
from featcircuits.dictionaries.formats import DictionaryState, read_json
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import DictionaryLoadError, SiteError
from featcircuits.model.sites import Site
from featcircuits.writes import committed_path

GEMMA_SCOPE_FILE = "params.npz"
LLAMA_SCOPE_CONFIG = "hyperparams.json"
LLAMA_SCOPE_WEIGHTS = "checkpoints/final.safetensors"
R1_CONFIG, R1_WEIGHTS = "config.json", "sae_weights.safetensors"

_GEMMA_REPO = re.compile(r"gemma-scope-(?P<size>\d+b)-(?P<tune>pt|it)-(?P<kind>res|mlp|att)"
                         r"(?![a-z0-9])")
_GEMMA_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_NPY_FLOATS = ("float16", "float32", "float64")


# ------------------------------------------------------------------------- Gemma Scope
def is_gemma_scope(folder: Path) -> bool:
    """Whether ``folder`` holds a Gemma Scope ``params.npz``."""
    return committed_path(folder / GEMMA_SCOPE_FILE).is_file()


def gemma_scope_hook(repo: str, sae_path: str) -> tuple[str | None, str | None]:
    """``(hook_name, model_name)`` SAELens gives a Gemma Scope SAE of repo ``repo`` (any text
    holding ``gemma-scope-<size>-<pt|it>-<res|mlp|att>``) at ``sae_path``
    (``layer_3/width_16k/average_l0_50``); ``(None, None)`` when ``repo`` names no release."""
    match = _GEMMA_REPO.search(repo)
    if match is None:
        return None, None
    model = f"gemma-2-{match['size']}" + ("-it" if match["tune"] == "it" else "")
    layer = re.search(r"layer_(\d+)", sae_path)
    embedding = sae_path.split("/")[0] == "embedding"
    if match["kind"] == "res" and embedding:
        return "hook_embed", model
    if layer is None:
        return None, model
    suffix = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}
    return f"blocks.{layer.group(1)}.{suffix[match['kind']]}", model


def read_gemma_scope(folder: Path, *, repo: str | None = None,
                     sae_path: str | None = None) -> tuple[str, DictionaryState]:
    """Read a Gemma Scope folder into SAELens' converted ``jumprelu`` state.

    ``repo`` and ``sae_path`` (the SAE's folder inside the repo) default to what the folder's
    own path shows: its last three parts, and the first part above them naming a Gemma Scope
    repo. Raises ``DictionaryLoadError`` on missing, extra, non-float or mis-shaped arrays, a
    ``scaling_factor`` other than ones, or a hook featcircuits has no site for.
    """
    path = committed_path(folder / GEMMA_SCOPE_FILE)
    parts = Path(folder).resolve().parts
    if sae_path is None:
        sae_path = "/".join(parts[-3:])
    if repo is None:
        repo = next((part for part in reversed(parts[:-3]) if _GEMMA_REPO.search(part)), "")
    declared = _npz_arrays(path)
    names = {("W_" + key[2:] if key.startswith("w_") else key): key for key in declared}
    if "W_enc" not in names or len(declared[names["W_enc"]][1]) != 2:
        raise DictionaryLoadError(f"{str(path)!r} lacks a 2-d 'W_enc' (has {sorted(declared)})",
                                  hint="a Gemma Scope params.npz holds W_enc, W_dec, b_enc, "
                                  "b_dec and threshold; the file is incomplete or another kind")
    d_in, d_sae = declared[names["W_enc"]][1]
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,),
              "b_dec": (d_in,), "threshold": (d_sae,)}
    check_declared(path, {name: declared[key] for name, key in names.items()},
                   required=shapes, optional={"scaling_factor": (d_sae,)})
    with _open_npz(path) as data:
        tensors = {name: torch.from_numpy(data[key].copy()).float()
                   for name, key in names.items()}
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.allclose(scaling, torch.ones_like(scaling)):
        raise DictionaryLoadError(
            f"{str(path)!r} holds a scaling_factor other than ones (a fine-tuning scale); "
            "SAELens refuses it too (finetuning_scaling_factor is false for Gemma Scope)",
            hint="use the published params.npz of the release")
    if sae_path.split("/")[0] == "embedding":  # SAELens: trained on sqrt(d_model)-scaled inputs
        tensors["W_enc"] = tensors["W_enc"] / math.sqrt(d_in)
        tensors["W_dec"] = tensors["W_dec"] * math.sqrt(d_in)
    hook_name, model_name = gemma_scope_hook(repo, sae_path)
    config = _converted_cfg(d_in, d_sae, hook_name, model_name, folder)
    config["scope"] = {"layout": "gemma_scope", "repo": repo or None, "sae_path": sae_path}
    return "jumprelu", DictionaryState(tensors, config, folder)


def _open_npz(path: Path):
    import numpy as np

    return np.load(path, allow_pickle=False)


def _npz_arrays(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{key: (dtype, shape)}`` of the arrays of ``.npz`` file ``path``, read from each
    member's ``.npy`` header before any array is loaded (sizes checked against the zip
    entries and this machine's memory)."""
    import numpy as np

    regular_file(path)
    fix = "re-download the SAE's params.npz"
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    raise DictionaryLoadError(f"{str(path)!r}: member {member.filename!r} "
                                              "is not a .npy array", hint=fix)
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read_header(handle)
                if dtype.name not in _NPY_FLOATS or fortran and len(shape) > 1:
                    raise DictionaryLoadError(
                        f"{str(path)!r}: array {member.filename[:-4]!r} has dtype "
                        f"{dtype}{' (Fortran order)' if fortran else ''}, not a C-ordered "
                        "float array", hint=fix)
                if math.prod(shape) * dtype.itemsize > member.file_size:
                    raise DictionaryLoadError(
                        f"{str(path)!r}: array {member.filename[:-4]!r} claims shape {shape} "
                        f"but its entry holds {member.file_size} bytes", hint=fix)
                found[member.filename[:-4]] = (dtype.name, tuple(int(n) for n in shape))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DictionaryLoadError(f"{str(path)!r} is not a readable .npz archive: {exc}",
                                  hint=fix) from exc
    check_memory(path, sum(math.prod(shape) for _, shape in found.values()))
    return found


# ------------------------------------------------------------------------- Llama Scope
def is_llama_scope(folder: Path) -> bool:
    """Whether ``folder`` holds a Llama Scope ``hyperparams.json`` + checkpoint."""
    return (committed_path(folder / LLAMA_SCOPE_CONFIG).is_file()
            and committed_path(folder / LLAMA_SCOPE_WEIGHTS).is_file())


def read_llama_scope(folder: Path) -> tuple[str, DictionaryState]:
    """Read a Llama Scope folder into SAELens' converted ``jumprelu`` state, folded with the
    hyperparameters' own norm factor (``meta["norm_scaling_factor"]``; :func:`refold`
    changes it). Raises ``DictionaryLoadError`` on a missing or malformed hyperparameter, or
    missing / mis-shaped tensors."""
    hyper_path = committed_path(folder / LLAMA_SCOPE_CONFIG)
    hyper = read_json(hyper_path)
    d_in = _whole(hyper, "d_model", hyper_path)
    d_sae = _whole(hyper, "d_sae", hyper_path)
    norms = hyper.get("dataset_average_activation_norm")
    average = norms.get("in") if isinstance(norms, dict) else None
    theta = hyper.get("jump_relu_threshold")
    for name, value in (("dataset_average_activation_norm.in", average),
                        ("jump_relu_threshold", theta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and (value > 0 or name == "jump_relu_threshold")):
            raise DictionaryLoadError(
                f"{str(hyper_path)!r}: {name} must be a finite number"
                f"{' > 0' if name != 'jump_relu_threshold' else ''}, got {value!r}",
                hint="the hyperparams.json is not Llama Scope's, or was edited")
    hook_name = hyper.get("hook_point_in")
    if not isinstance(hook_name, str):
        raise DictionaryLoadError(f"{str(hyper_path)!r}: hook_point_in must be a hook name, "
                                  f"got {hook_name!r}", hint="the hyperparams.json was edited")
    factor = math.sqrt(d_in) / average
    tensors = _lm_saes_tensors(committed_path(folder / LLAMA_SCOPE_WEIGHTS), d_in, d_sae)
    tensors["threshold"] = torch.full((d_sae,), float(theta * factor))
    _fold(tensors, factor)
    config = _converted_cfg(d_in, d_sae, hook_name, "meta-llama/Llama-3.1-8B", folder)
    config["scope"] = {"layout": "llama_scope", "norm_scaling_factor": factor}
    return "jumprelu", DictionaryState(tensors, config, folder)


def is_llama_scope_r1(folder: Path) -> bool:
    """Whether ``folder`` holds a Llama Scope R1-Distill ``config.json`` + weights (and no
    SAELens ``cfg.json``)."""
    return (committed_path(folder / R1_CONFIG).is_file()
            and committed_path(folder / R1_WEIGHTS).is_file()
            and not committed_path(folder / "cfg.json").exists())


def read_llama_scope_r1(folder: Path) -> tuple[str, DictionaryState]:
    """Read a Llama Scope R1-Distill folder into SAELens' converted ``jumprelu`` state,
    unfolded (``meta["norm_scaling_factor"] = 1.0``; the hub refolds with the table's)."""
    config_path = committed_path(folder / R1_CONFIG)
    raw = read_json(config_path)
    d_in = _whole(raw, "d_model", config_path)
    d_sae = d_in * _whole(raw, "expansion_factor", config_path)
    hook_name = raw.get("hook_point_in")
    if not isinstance(hook_name, str):
        raise DictionaryLoadError(f"{str(config_path)!r}: hook_point_in must be a hook name, "
                                  f"got {hook_name!r}", hint="the config.json was edited")
    tensors = _lm_saes_tensors(committed_path(folder / R1_WEIGHTS), d_in, d_sae,
                               threshold="log_jumprelu_threshold")
    tensors["threshold"] = tensors.pop("log_jumprelu_threshold").exp()
    config = _converted_cfg(d_in, d_sae, hook_name,
                            "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", folder)
    config["scope"] = {"layout": "llama_scope_r1_distill", "norm_scaling_factor": 1.0,
                       "normalize_activations": "expected_average_only_in"}
    return "jumprelu", DictionaryState(tensors, config, folder)


def _lm_saes_tensors(weights: Path, d_in: int, d_sae: int, threshold: str | None = None
                     ) -> dict[str, torch.Tensor]:
    """``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` (and ``threshold``'s tensor ``[d_sae]``)
    of an lm_saes checkpoint, as float32, shapes checked before loading; other tensors are
    not read (SAELens ignores them)."""
    from safetensors import safe_open

    header = read_safetensors_header(weights)
    shapes = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,),
              "decoder.weight": (d_in, d_sae), "decoder.bias": (d_in,)}
    if threshold is not None:
        shapes[threshold] = (d_sae,)
    check_declared(weights, {name: (info.dtype, info.shape)
                             for name, info in header.tensors.items() if name in shapes},
                   required=shapes)
    with safe_open(str(weights), framework="pt") as handle:
        raw = {name: handle.get_tensor(name).float() for name in shapes}
    tensors = {"W_enc": raw.pop("encoder.weight").T.contiguous(),
               "b_enc": raw.pop("encoder.bias"),
               "W_dec": raw.pop("decoder.weight").T.contiguous(),
               "b_dec": raw.pop("decoder.bias")}
    return {**tensors, **raw}


def _fold(tensors: dict[str, torch.Tensor], factor: float) -> None:
    tensors["W_enc"] = tensors["W_enc"] * factor
    tensors["W_dec"] = tensors["W_dec"] / factor
    tensors["b_dec"] = tensors["b_dec"] / factor


@torch.no_grad()
def refold(sae: SparseAutoencoder, factor: float) -> SparseAutoencoder:
    """Re-fold a Llama Scope SAE read from a folder with the release table's
    ``norm_scaling_factor`` ``factor`` instead of its hyperparameters' (what SAELens'
    ``from_pretrained`` folds); the thresholds stay as SAELens sets them."""
    old = sae.meta.get("norm_scaling_factor")
    if not isinstance(old, float) or sae.tied:
        raise DictionaryLoadError(f"{sae!r} is not a Llama Scope SAE read by featcircuits",
                                  hint="refold applies to load_dictionary(<Llama Scope folder>)")
    ratio = factor / old
    sae.W_enc.mul_(ratio)
    sae.W_dec_untied.div_(ratio)
    sae.b_dec.div_(ratio)
    sae.meta["norm_scaling_factor"] = float(factor)
    sae.meta.pop("normalize_activations", None)  # folded: it reads raw activations now
    return sae


# ----------------------------------------------------------------------------- shared
def read_scope(folder: Path) -> SparseAutoencoder:
    """A Gemma Scope, Llama Scope or Llama Scope R1-Distill folder as the JumpReLU SAE SAELens converts it to (built
    by the registry's ``jumprelu`` format); ``meta`` records the layout (and Llama Scope's
    folded ``norm_scaling_factor``). Raises ``DictionaryLoadError`` for a folder in none of
    the three layouts."""
    from featcircuits.dictionaries.registry import dictionary_format

    reader = (read_gemma_scope if is_gemma_scope(folder) else
              read_llama_scope if is_llama_scope(folder) else read_llama_scope_r1)
    architecture, state = reader(folder)
    sae = dictionary_format(architecture, folder).from_state(state)
    sae.meta.update(state.config.pop("scope"))
    return sae  # type: ignore[return-value]


def _whole(config: dict[str, Any], key: str, where: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DictionaryLoadError(f"{str(where)!r}: {key!r} must be a positive integer, "
                                  f"got {value!r}", hint="the hyperparams.json was edited")
    return value


def _converted_cfg(d_in: int, d_sae: int, hook_name: str | None, model_name: str | None,
                   folder: Path) -> dict[str, Any]:
    """The SAELens ``cfg.json`` of a converted Scope SAE; a hook name featcircuits has no
    site for is refused (the SAE would otherwise load without a site and could be used at
    the wrong tensor)."""
    if hook_name is not None:
        try:
            Site.from_hook_name(hook_name)
        except SiteError as exc:
            raise DictionaryLoadError(
                f"{str(folder)!r} is an SAE at TransformerLens hook {hook_name!r}, which has no "
                "featcircuits site" + (" (hook_z: the per-head attention outputs before the "
                                       "output projection)" if "hook_z" in hook_name else ""),
                hint="use an SAE trained on the residual stream or an MLP / attention output"
            ) from exc
    return {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae,
            "apply_b_dec_to_input": False, "normalize_activations": "none",
            "hook_name": hook_name, "model_name": model_name}


__all__ = [
    "GEMMA_SCOPE_FILE",
    "LLAMA_SCOPE_CONFIG",
    "LLAMA_SCOPE_WEIGHTS",
    "gemma_scope_hook",
    "is_gemma_scope",
    "is_llama_scope",
    "is_llama_scope_r1",
    "read_gemma_scope",
    "read_llama_scope",
    "read_llama_scope_r1",
    "read_scope",
    "refold",
]
