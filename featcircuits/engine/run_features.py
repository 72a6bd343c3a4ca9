"""Feature activations of a circuit run, encoded on demand, and the scans over them.

``CircuitRuns`` keeps ``[n, T, d_model]`` tensors only: the clean activations (and a
transcoder's input activations), the errors, the gradients and, for the ``corrupt``
ablation, the corrupted run's activations. Feature activations ``[n, T, n_features]`` are
encoded when they are read, through ``engine.cache.SiteFeatures`` (``select`` encodes one
block of prompts and features), and every scan over a whole site (means, active features,
node scales, decoding) runs in ``engine.cache.feature_blocks`` within ``max_memory //
STREAM_SHARE``. What each ablation's sources keep, per site:

=================  ===============================================  ==================
ablation           features                                         errors
=================  ===============================================  ==================
``zero``           nothing (an expanded zero)                       an expanded zero
``mean``           ``[F]`` (summed blockwise)                       ``[d]``, expanded
``position_mean``  ``[T, F]`` (summed blockwise)                    ``[T, d]``, expanded
``resample``       the prompt index ``[n]`` (encodes clean rows)    ``[n, T, d]``
``corrupt``        the corrupted activations ``[n, T, d]``          ``[n, T, d]``
=================  ===============================================  ==================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.engine.cache import SiteFeatures, select_features
from featcircuits.engine.carried import earlier_writes
from featcircuits.engine.memory import FLOAT_BYTES, rows_per_chunk
from featcircuits.engine.sources import resample_index
from featcircuits.errors import ParameterError

if TYPE_CHECKING:  # the runs own these helpers' state; imported for hints only
    from featcircuits.engine.runs import CircuitRuns

__all__ = ["active_cells", "compute_sources", "decoded", "encoder", "feature_scales"]

Compute = Callable[[str, slice, "torch.Tensor | None"], torch.Tensor]


def encoder(dictionaries: Mapping[str, Dictionary], inputs: Mapping[str, torch.Tensor],
            budget: int, index: torch.Tensor | None = None) -> Compute:
    """A ``SiteFeatures`` compute function: ``encode(inputs[site])`` of a block of prompts
    (rows ``index[prompts]`` when ``index [n]`` is given) and features. A dictionary that
    cannot encode a subset (not ``separable``) encodes every feature of a few prompts at a
    time (``[p, T, F]`` within ``budget``) and keeps the requested ones."""

    @torch.no_grad()
    def compute(site: str, prompts: slice, feature_ids: torch.Tensor | None) -> torch.Tensor:
        x = inputs[site][prompts] if index is None else inputs[site][index[prompts]]
        dictionary = dictionaries[site]
        if feature_ids is None or dictionary.separable:
            return dictionary.encode_features(x, feature_ids)
        step = rows_per_chunk(budget, 2 * FLOAT_BYTES * x.shape[1] * dictionary.n_features)
        return torch.cat([dictionary.encode_features(x[start:start + step], feature_ids)
                          for start in range(0, len(x), step)])

    return compute


def constant(values: Mapping[str, torch.Tensor], n: int, width: int) -> Compute:
    """A ``SiteFeatures`` compute function for values that are the same at every prompt:
    ``values[site]`` ``[F]`` or ``[T, F]``, expanded (not copied) to ``[p, T, k]``."""

    def compute(site: str, prompts: slice, feature_ids: torch.Tensor | None) -> torch.Tensor:
        value = values[site] if feature_ids is None else values[site][..., feature_ids]
        return value.expand(len(range(n)[prompts]), width, value.shape[-1])

    return compute


@torch.no_grad()
def decoded(runs: CircuitRuns, site: str, features: Mapping[str, torch.Tensor]
            ) -> torch.Tensor:
    """``[n, T, d]`` ``decode(features[site])``, decoded block by block."""
    dictionary = runs.dictionaries[site]
    shared = features.shared(site) if isinstance(features, SiteFeatures) else None
    if shared is not None:   # the same at every prompt: decode it once
        one = shared.reshape(1, -1 if shared.dim() > 1 else 1, shared.shape[-1])
        return dictionary.decode(one).expand(runs.n, runs.width, -1).clone()
    out = None
    split = False
    for prompts, ids in runs.feature_blocks(site):
        block = select_features(features, site, prompts, ids)
        if out is None:
            out = block.new_zeros(runs.n, runs.width, dictionary.d_model)
        if ids is None:
            out[prompts] = dictionary.decode(block)
        else:  # decode is affine: sum the blocks' parts, add the bias once
            out[prompts] += block @ dictionary.directions[ids].to(block.dtype)
            split = True
    if split:
        out += dictionary.decoder_bias.to(out.dtype)
    return out


@torch.no_grad()
def _masked_sums(runs: CircuitRuns, site: str, features: Mapping[str, torch.Tensor]
                 ) -> torch.Tensor:
    """``[T, F]`` float64: the features summed over prompts at real tokens (blockwise)."""
    tm = runs.token_mask
    sums = torch.zeros(runs.width, runs.dictionaries[site].n_features, dtype=torch.float64,
                       device=runs.device)
    for prompts, ids in runs.feature_blocks(site):
        block = select_features(features, site, prompts, ids).float() * tm[prompts, :, None]
        sums[:, slice(None) if ids is None else ids] += block.sum(0).double()
    return sums


def _means(sums: torch.Tensor, counts: torch.Tensor, positional: bool) -> torch.Tensor:
    """From ``sums [T, k]`` over ``counts [T]`` real tokens: the overall mean ``[k]``, or
    (``positional``) the mean at each position ``[T, k]`` (the overall mean where no prompt
    reaches the position)."""
    overall = sums.sum(0) / counts.sum().clamp(min=1)
    if not positional:
        return overall
    means = sums / counts[:, None].clamp(min=1)
    return torch.where(counts[:, None] > 0, means, overall)


@torch.no_grad()
def compute_sources(runs: CircuitRuns, ablation: str
                    ) -> tuple[SiteFeatures, dict[str, torch.Tensor], list[torch.Tensor]]:
    """``(features, errors, kept)``: the ablation's ``{site: [n, T, F]}`` features (a
    ``SiteFeatures``, encoded when read), its ``{site: [n, T, d]}`` errors and the tensors
    the two keep (see the module docstring)."""
    sites, n, width = runs.sites, runs.n, runs.width
    budget = runs.scan_budget
    dtypes = {site: runs.activations[site].dtype for site in sites}
    errors: dict[str, torch.Tensor] = {}
    kept: list[torch.Tensor] = []
    if ablation == "zero":  # views: nothing [n, T, ·] is allocated
        values = {site: torch.zeros(1, dtype=dtypes[site], device=runs.device).expand(
            runs.dictionaries[site].n_features) for site in sites}
        errors = {site: runs.errors[site].new_zeros(()).expand_as(runs.errors[site])
                  for site in sites}
        features = SiteFeatures(sites, constant(values, n, width), shared=values)
    elif ablation in ("mean", "position_mean"):
        positional = ablation == "position_mean"
        tm = runs.token_mask
        counts = tm.sum(0).double()
        values = {}
        for site in sites:
            values[site] = _means(_masked_sums(runs, site, runs.features), counts,
                                  positional).to(dtypes[site])
            error_sums = (runs.errors[site].float() * tm[..., None]).sum(0).double()
            error = _means(error_sums, counts, positional).to(dtypes[site])
            errors[site] = error.expand_as(runs.errors[site])
            kept += [values[site], error]
        features = SiteFeatures(sites, constant(values, n, width), shared=values)
    elif ablation == "resample":
        index = resample_index(runs.lengths, runs.seed)
        features = SiteFeatures(sites, encoder(runs.dictionaries, runs.input_activations,
                                               budget, index))
        errors = {site: runs.errors[site][index] for site in sites}
        kept += [index, *errors.values()]
    else:  # corrupt
        if runs.pairs is None:
            raise ParameterError("ablation 'corrupt' needs prompt pairs",
                                 hint="pass prompt pairs, or use zero/mean/resample")
        activations, inputs = runs.run_corrupt()
        features = SiteFeatures(sites, encoder(runs.dictionaries, inputs, budget))
        errors = {site: activations[site] - decoded(runs, site, features) for site in sites}
        for site in sites:  # a CLT site's error also subtracts earlier layers' writes there
            earlier = earlier_writes(runs.dictionaries, features, site)
            if earlier is not None:
                errors[site] = errors[site] - earlier
        kept += [*inputs.values(), *errors.values()]
    return features, errors, kept


@torch.no_grad()
def active_cells(runs: CircuitRuns, site: str, source: Mapping[str, torch.Tensor]
                 ) -> torch.Tensor:
    """``[T, F]`` bool: where a feature's source differs from its clean value at a real
    token of some prompt (blockwise)."""
    tm = runs.token_mask
    active = torch.zeros(runs.width, runs.dictionaries[site].n_features, dtype=torch.bool,
                         device=runs.device)
    for prompts, ids in runs.feature_blocks(site, temporaries=5):
        clean = select_features(runs.features, site, prompts, ids)
        diff = (select_features(source, site, prompts, ids) - clean).abs() * tm[prompts, :, None]
        columns = slice(None) if ids is None else ids
        active[:, columns] |= diff.amax(0) > 0
    return active


@torch.no_grad()
def feature_scales(runs: CircuitRuns, site: str, positional: bool,
                   feature_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Every feature's typical magnitude on the clean run (``CircuitRuns.node_scale``):
    ``[F]`` the prompt mean of ``Σ_t w_t |c_t|``, or (``positional``) ``[T, F]`` the prompt
    mean of ``|c_t|`` at real tokens; float32, blockwise. ``feature_ids [k]``: those
    features only (``[k]`` / ``[T, k]``, encoded in one block)."""
    weights = runs.token_mask if positional else runs.node_weights
    F = runs.dictionaries[site].n_features if feature_ids is None else len(feature_ids)
    total = torch.zeros((runs.width, F) if positional else (F,), device=runs.device)
    blocks = (runs.feature_blocks(site) if feature_ids is None
              else [(slice(None), feature_ids)])
    for prompts, ids in blocks:
        values = select_features(runs.features, site, prompts, ids).float().abs()
        values = values * weights[prompts, :, None]
        summed = values.sum(0) if positional else values.sum((0, 1))
        total[..., slice(None) if ids is None or feature_ids is not None else ids] += summed
    return total / runs.n

