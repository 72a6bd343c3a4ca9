"""Trace-level edit primitives: feature patches, error patches, finiteness checks.

On the corrupted run, the activation x̄ at a site is replaced by::

    x′ = x̄ + s(x̄) · Σ_{i∈F} (cᵢ − c̄ᵢ) fᵢ

where ``c̄ = encode(x̄)`` is read live from the run being patched, ``c`` comes from a source
(see ``featcircuits.engine.sources``), ``fᵢ`` are the dictionary's decoder directions and
``s(x̄) = dictionary.decoder_scale(x̄)`` is 1 except for an SAE that normalises each input
(``NormalizedSparseAutoencoder``: the scale its decoder undoes, per prompt and position, of
the activation being patched, so the edit is its ``decode(c, x̄) − decode(c̄, x̄)``).
The reconstruction error of x̄ is untouched, so patching the empty set reproduces the
corrupted run exactly, and with a complete basis (neurons, full PCA) patching every feature
at every position reproduces the clean activation.

``patch_site`` and ``patch_error`` are called inside your own ``model.trace``; both
engines (``featcircuits.patching.PatchingExperiment`` and ``CircuitRuns``) build on them.
"""

from __future__ import annotations

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import DictionaryError, NonFiniteError, ParameterError
from featcircuits.model.sites import Site

__all__ = ["add_carried", "check_finite_activations", "input_site_of", "patch_error",
           "patch_features_and_error", "patch_site", "refuse_decoder_scale"]


def patch_site(model, site: Site | str, dictionary: Dictionary, source_features: torch.Tensor,
               feature_mask: torch.Tensor, position_mask: torch.Tensor | None = None, *,
               feature_ids: torch.Tensor | None = None,
               rows: torch.Tensor | None = None,
               x_in: torch.Tensor | None = None,
               carry: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Inside a trace: patch features at ``site``; returns the edit ``x′ − x̄``.

    Args:
        source_features: ``[batch, pos, n]`` (or broadcastable) values cᵢ to patch in.
        feature_mask: ``[batch, n]`` or ``[n]``; 1 for features in F, 0 elsewhere; or
            ``[batch, pos, n]`` for a different feature set at each position.
        position_mask: ``[batch, pos]``; 1 at positions to patch (``None``: all).
        feature_ids: ``[n]`` the dictionary columns that ``source_features`` and
            ``feature_mask`` refer to (``None``: all ``n_features``). Restricting to the
            features that are ever patched saves memory and time; the result is the same.
        rows: ``[batch]`` index into the activation's batch: gather these rows before
            patching, so one forward of ``n`` prompts evaluates many (prompt, feature set)
            rows from this site on (the layers before the site run once per prompt; e.g.
            ``torch.arange(n).repeat(k)`` evaluates ``k`` sets).
        x_in: ``[batch, pos, d_model]`` the input site's activation, read earlier in the same
            pass (for a dictionary that reads elsewhere than it writes, when its input site
            can no longer be read in forward order); c̄ is encoded from it.
        carry: required for a dictionary whose features also write later sites (a
            cross-layer transcoder layer, ``dictionary.later_writes``): the edit
            ``Σ_{i∈F}(cᵢ − c̄ᵢ) fᵢ^{(S)}`` of each later site ``S`` is added to
            ``carry[S]``; the caller adds it there with :func:`add_carried` when the trace
            reaches ``S`` (forward order). Without it such a dictionary is refused, since
            editing only ``site`` would be a wrong answer.

    A dictionary whose ``input_site`` differs from ``site`` (a ``Transcoder``) encodes c̄ from
    the activation at ``input_site`` and adds the edit at ``site``.

    Returns:
        ``[batch, pos, d_model]`` the edit added to the activation.
    """
    site = Site.parse(site)
    input_site = input_site_of(dictionary, site)
    later = dictionary.later_writes
    if later and carry is None:
        raise ParameterError(
            f"{dictionary!r} also writes {sorted(later)}: patching only {site} would leave "
            "those edits out", hint="pass carry={} and call add_carried(model, S, carry) at "
            "each later site S (PatchingExperiment does)")
    if rows is not None and (x_in is not None or input_site != site):
        raise ParameterError("rows cannot gather at a transcoder's output site",
                             hint="repeat the input ids instead (rows=None)")
    if x_in is None and input_site != site:
        x_in = input_site.read(model)
    activation = site.read(model)
    if rows is not None and x_in is None:
        activation = activation[rows]
    encoded = activation if x_in is None else x_in
    current = dictionary.encode_features(encoded, feature_ids)
    directions = dictionary.directions
    if feature_ids is not None:
        directions = directions[feature_ids]
    weight = _feature_weight(source_features, current, feature_mask, position_mask)
    scale = dictionary.decoder_scale(encoded)  # [batch, pos, 1], None: 1
    if scale is not None:
        weight = weight * scale.to(weight.dtype)
    edit = (weight @ directions.to(weight.dtype)).to(activation.dtype)  # masks may be fp32
    site.write(model, activation + edit)
    for later_site, later_directions in later.items():
        if feature_ids is not None:
            later_directions = later_directions[feature_ids]
        later_edit = (weight @ later_directions.to(weight.dtype)).to(activation.dtype)
        carry[later_site] = carry[later_site] + later_edit if later_site in carry else later_edit
    return edit


def _feature_weight(source_features, current, feature_mask, position_mask) -> torch.Tensor:
    """``[batch, pos, n]`` ``(c_source − c̄)`` where features (and positions) are patched.
    One ``[batch, pos, n]`` tensor is allocated (the masks multiply it in place): at 32,768
    features each is 2 MiB per row and position."""
    if feature_mask.ndim == 3:
        mask = feature_mask
    else:
        mask = feature_mask if feature_mask.ndim == 2 else feature_mask[None, :]
        mask = mask[:, None, :]
    weight = _times(source_features - current, mask)
    if position_mask is not None:
        weight = _times(weight, position_mask[..., None])
    return weight


def _in_place(tensor: torch.Tensor, factor: torch.Tensor) -> bool:
    """Whether ``tensor`` (a fresh temporary) can take ``tensor * factor`` in place: same
    shape and dtype as the out-of-place result, and ``factor`` needs no gradient."""
    return (not factor.requires_grad and torch.result_type(tensor, factor) == tensor.dtype
            and torch.broadcast_shapes(tensor.shape, factor.shape) == tensor.shape)


def _times(tensor: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``tensor * factor``, in place where that is the same tensor (``_in_place``)."""
    return tensor.mul_(factor) if _in_place(tensor, factor) else tensor * factor


def patch_features_and_error(model, site: Site | str, dictionary: Dictionary,
                             patch: dict, patch_err: dict,
                             x_in: torch.Tensor | None = None) -> torch.Tensor:
    """Inside a trace: ``patch_site(**patch)`` then ``patch_error(**patch_err,
    prior_edit=that edit)`` at one site, with one encode and one decode: with ``c̄ =
    encode(x̄)``, ``a`` the error's patch weight and ``W`` the features' (see
    ``patch_site``), ``x′ = x̄ + (W + a c̄) @ D + a (e_source − x̄ + b)`` — the same value as
    the two calls (``ē = x̄ − c̄ @ D − b``), which encode twice and decode twice. For an
    affine decoder, a dictionary that writes only its own site and ``patch`` without
    ``feature_ids``/``rows``/``carry`` (else the two calls run). Returns the total edit."""
    site = Site.parse(site)
    fused = (not dictionary.later_writes and type(dictionary).decode is Dictionary.decode
             and not set(patch) & {"feature_ids", "rows", "carry"})
    if not fused:
        edit = patch_site(model, site, dictionary, **patch, x_in=x_in)
        return edit + patch_error(model, site, dictionary, **patch_err, prior_edit=edit,
                                  x_in=x_in)
    input_site = input_site_of(dictionary, site)
    if x_in is None and input_site != site:
        x_in = input_site.read(model)
    activation = site.read(model)
    current = dictionary.encode(activation if x_in is None else x_in)
    weight = _feature_weight(patch["source_features"], current, patch["feature_mask"],
                             patch.get("position_mask"))
    error_weight = patch_err["error_mask"].to(weight.dtype)[:, None, None]
    if patch_err.get("position_mask") is not None:
        error_weight = error_weight * patch_err["position_mask"][..., None]   # [batch, pos, 1]
    directions = dictionary.directions.to(weight.dtype)
    if _in_place(weight, error_weight) and not current.requires_grad:
        combined = weight.addcmul_(error_weight, current)     # no second [b, T, F] tensor
    else:
        combined = weight + error_weight * current
    edit = (combined @ directions
            + error_weight * (patch_err["source_error"] - activation
                              + dictionary.decoder_bias.to(weight.dtype))).to(activation.dtype)
    site.write(model, activation + edit)
    return edit


def add_carried(model, site: Site | str, carry: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Inside a trace: add (and remove from ``carry``) the edit earlier sites' patches left
    for ``site`` (``patch_site(..., carry=carry)``); returns it, ``None`` if there is none.
    ``[batch, pos, d_model]``."""
    name = str(Site.parse(site))
    if name not in carry:
        return None
    edit = carry.pop(name)
    resolved = Site.parse(name)
    resolved.write(model, resolved.read(model) + edit)
    return edit


def refuse_decoder_scale(dictionary: Dictionary, site: Site | str, *, what: str,
                         missing: str = "s(x) in its nodes' contributions (gradient · "
                         "s(x)·fᵢ), error terms (x − decode(c, x)) and frozen features"
                         ) -> None:
    """``DictionaryError`` if ``dictionary`` scales its decoder per input (``decoder_scale``
    is not ``None``: an SAE that normalises each input) and ``what`` adds fixed directions:
    ``missing`` says what it would need; a silent fixed-direction answer would be off by
    ``s(x)`` at every position."""
    probe = torch.ones(1, dictionary.d_model, dtype=dictionary.directions.dtype,
                       device=dictionary.directions.device)
    if dictionary.decoder_scale(probe) is not None:
        raise DictionaryError(
            f"{what} does not support dictionaries with a per-input decoder scale yet: "
            f"{dictionary!r} at {site} writes s(x)·directions[i] (s(x) varies per prompt "
            f"and position); what is missing is {missing}",
            hint="PatchingExperiment patches, ablates and ranks its features exactly; for "
            "this, use an SAE trained with normalize_activations none or "
            "expected_average_only_in")


def input_site_of(dictionary: Dictionary, site: Site | str) -> Site:
    """Where ``dictionary`` reads its input: ``site``, unless its ``input_site`` differs
    from its own ``site`` (a transcoder), then that ``input_site``."""
    input_site = dictionary.input_site
    if input_site is None or input_site == dictionary.site:
        return Site.parse(site)
    return Site.parse(input_site)


def patch_error(model, site: Site | str, dictionary: Dictionary, source_error: torch.Tensor,
                error_mask: torch.Tensor, position_mask: torch.Tensor | None = None, *,
                prior_edit: torch.Tensor | None = None,
                x_in: torch.Tensor | None = None) -> torch.Tensor:
    """Inside a trace: replace the dictionary's error term at ``site``; returns the edit.

    With ``ē = x̄ − decode(encode(x̄))`` read live, ``x′ = x̄ + m · (e_source − ē)``: the
    features are untouched and only the part the dictionary misses is swapped.

    After ``edit = patch_site(...)`` at the same site, pass ``prior_edit=edit``: the error is
    then taken from the activation before that edit (``x̄ − edit``), so patching features and
    the error together gives ``decode(c with patched features) + e_source`` — the error of
    the already-patched activation would differ, since ``encode`` is not linear.

    Args:
        source_error: ``[batch, pos, d_model]`` (or broadcastable) error to patch in
            (zeros to ablate, the mean error, another prompt's error, ...).
        error_mask: ``[batch]``; 1 in rows whose error is patched.
        position_mask: ``[batch, pos]``; 1 at positions to patch (``None``: all).
        x_in: the input site's activation ``[batch, pos, d_model]`` read earlier in the pass,
            for a dictionary that reads elsewhere than it writes: the error is then
            ``x − decode(encode(x_in))``.

    Returns:
        ``[batch, pos, d_model]`` the edit added to the activation.
    """
    site = Site.parse(site)
    activation = site.read(model)
    weight = error_mask.to(activation.dtype)[:, None, None]
    if position_mask is not None:
        weight = weight * position_mask[..., None]
    original = activation if prior_edit is None else activation - prior_edit
    error = (dictionary.error(original) if x_in is None
             else original - dictionary.decode(dictionary.encode(x_in), x_in))
    edit = ((source_error - error) * weight).to(activation.dtype)
    site.write(model, activation + edit)
    return edit


def check_finite_activations(activations: torch.Tensor, *, site: str, run: str,
                             token_mask: torch.Tensor | None = None,
                             first_prompt: int = 0) -> None:
    """Raise ``NonFiniteError`` naming the site, run, prompt and position of the first
    NaN/inf in ``activations [n, pos, d]`` (only real tokens when ``token_mask [n, pos]``).
    ``first_prompt``: the index of the first row's prompt, when ``activations`` is a chunk
    of prompts (the message names the prompt by its index in the whole run)."""
    bad = ~torch.isfinite(activations).all(dim=-1)
    if token_mask is not None:
        bad = bad & token_mask.to(bad.device).bool()
    if not bool(bad.any()):
        return
    row, position = (int(v) for v in torch.nonzero(bad)[0])
    value = activations[row, position][~torch.isfinite(activations[row, position])][0]
    raise NonFiniteError(
        f"the {run} run has {float(value)} at site {site}, prompt {first_prompt + row}, "
        f"position {position} "
        f"({int(bad.sum())} token positions affected)",
        hint="the model itself produced NaN/inf: check its weights, and load it in float32 "
        "(float16 overflows in large activations)")
