"""Sub-rank-one feature patching.

On the corrupted run, the activation x̄ at a site is replaced by::

    x′ = x̄ + Σ_{i∈F} (cᵢ − c̄ᵢ) fᵢ

where ``c̄ = encode(x̄)`` is read live from the run being patched, ``c`` comes from a source
(the clean run, zero, the dataset mean, or another prompt's clean run), and ``fᵢ`` are the
dictionary's decoder directions. The reconstruction error of x̄ is untouched, so patching
the empty set reproduces the corrupted run exactly, and with a complete basis (neurons,
full PCA) patching every feature at every position reproduces the clean activation.

``patch_site`` is the trace-level primitive: call it inside your own ``model.trace``.
``PatchingExperiment`` caches the clean and corrupted runs once and evaluates many feature
sets in batched forward passes (feature sets stacked along the batch dimension).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import einops
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.io import check_dictionary_fits
from featcircuits.errors import FeatureIdError, NonFiniteError, ParameterError
from featcircuits.engine.memory import FLOAT_BYTES, parse_memory, rows_per_chunk, split_rows
from featcircuits.model.metrics import answer_prob, kl_divergence, logit_diff
from featcircuits.model.loading import model_device, trace
from featcircuits.tasks.prompts import PromptPairs, tokenize_prompts
from featcircuits.model.sites import Site

FeatureSet = Sequence[int] | Mapping[str, Sequence[int]]
SOURCES = ("clean", "zero", "mean", "resample")


def patch_site(model, site: Site | str, dictionary: Dictionary, source_features: torch.Tensor,
               feature_mask: torch.Tensor, position_mask: torch.Tensor | None = None, *,
               feature_ids: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
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

    A dictionary whose ``input_site`` differs from ``site`` (a ``Transcoder``) encodes c̄ from
    the activation at ``input_site`` and adds the edit at ``site``.

    Returns:
        ``[batch, pos, d_model]`` the edit added to the activation.
    """
    site = Site.parse(site)
    input_site = input_site_of(dictionary, site)
    if input_site != site:
        if rows is not None:
            raise ParameterError("rows cannot gather at a transcoder's output site",
                                 hint="repeat the input ids instead (rows=None)")
        current = dictionary.encode_features(input_site.read(model), feature_ids)
        activation = site.read(model)
    else:
        activation = site.read(model)
        if rows is not None:
            activation = activation[rows]
        current = dictionary.encode_features(activation, feature_ids)
    directions = dictionary.directions
    if feature_ids is not None:
        directions = directions[feature_ids]
    if feature_mask.ndim == 3:
        weight = (source_features - current) * feature_mask
    else:
        mask = feature_mask if feature_mask.ndim == 2 else feature_mask[None, :]
        weight = (source_features - current) * mask[:, None, :]
    if position_mask is not None:
        weight = weight * position_mask[..., None]
    edit = (weight @ directions.to(weight.dtype)).to(activation.dtype)  # masks may be fp32
    site.write(model, activation + edit)
    return edit


def input_site_of(dictionary: Dictionary, site: Site | str) -> Site:
    """Where ``dictionary`` reads its input: ``site``, unless its ``input_site`` differs
    from its own ``site`` (a transcoder), then that ``input_site``."""
    input_site = dictionary.input_site
    if input_site is None or input_site == dictionary.site:
        return Site.parse(site)
    return Site.parse(input_site)


def patch_error(model, site: Site | str, dictionary: Dictionary, source_error: torch.Tensor,
                error_mask: torch.Tensor, position_mask: torch.Tensor | None = None, *,
                prior_edit: torch.Tensor | None = None) -> torch.Tensor:
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

    Returns:
        ``[batch, pos, d_model]`` the edit added to the activation.
    """
    site = Site.parse(site)
    activation = site.read(model)
    weight = error_mask.to(activation.dtype)[:, None, None]
    if position_mask is not None:
        weight = weight * position_mask[..., None]
    original = activation if prior_edit is None else activation - prior_edit
    edit = ((source_error - dictionary.error(original)) * weight).to(activation.dtype)
    site.write(model, activation + edit)
    return edit


def check_finite_activations(activations: torch.Tensor, *, site: str, run: str,
                             token_mask: torch.Tensor | None = None) -> None:
    """Raise ``NonFiniteError`` naming the site, run, prompt and position of the first
    NaN/inf in ``activations [n, pos, d]`` (only real tokens when ``token_mask [n, pos]``)."""
    bad = ~torch.isfinite(activations).all(dim=-1)
    if token_mask is not None:
        bad = bad & token_mask.to(bad.device).bool()
    if not bool(bad.any()):
        return
    row, position = (int(v) for v in torch.nonzero(bad)[0])
    value = activations[row, position][~torch.isfinite(activations[row, position])][0]
    raise NonFiniteError(
        f"the {run} run has {float(value)} at site {site}, prompt {row}, position {position} "
        f"({int(bad.sum())} token positions affected)",
        hint="the model itself produced NaN/inf: check its weights, and load it in float32 "
        "(float16 overflows in large activations)")


class RunCache:
    """Clean and corrupted runs of prompt pairs: activations at sites, answer logits.

    Computed once and shared by every experiment on the same prompts (e.g. when comparing
    bases at one site), so the clean and corrupted forwards are never rerun.

    Attributes:
        clean_logits, corrupt_logits: ``[n, vocab]`` logits at each answer position.
        clean_activations, corrupt_activations: ``{site: [n, pos, d_model]}``.
    """

    def __init__(self, model, prompts, sites: Sequence[str | Site]) -> None:
        # prompt tensors live where the model runs, like every tensor computed from them
        self.prompts: PromptPairs = tokenize_prompts(model.tokenizer, prompts).to(
            model_device(model))
        self.sites = sorted({str(Site.parse(site)) for site in sites},
                            key=lambda name: Site.parse(name).depth)
        self.clean_logits, self.clean_activations = self._run(model, self.prompts.clean_ids)
        self.corrupt_logits, self.corrupt_activations = self._run(model,
                                                                  self.prompts.corrupt_ids)

    @torch.no_grad()
    def _run(self, model, input_ids: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        final = self.prompts.final_positions
        activations: list[torch.Tensor] = []
        with trace(model, input_ids):
            for site in self.sites:
                activations.append(Site.parse(site).read(model).save())
            rows = torch.arange(len(final), device=final.device)
            logits = model.output.logits[rows, final].float().save()
        run = "clean" if input_ids is self.prompts.clean_ids else "corrupt"
        for site, values in zip(self.sites, activations):
            check_finite_activations(values, site=site, run=run,
                                     token_mask=self.prompts.token_mask)
        return logits, dict(zip(self.sites, activations))


class SiteFeatures(MutableMapping):
    """``{site: [n, pos, n_features]}`` feature activations of one kind, computed on demand.

    ``experiment.clean_features[site]`` encodes the cached activations each time it is read
    (nothing ``[n, pos, n_features]``-sized is kept, which for wide dictionaries would not
    fit); ``select(site, prompts, feature_ids)`` encodes only a block. Assigning a tensor
    (``features[site] = t``) overrides the computed values for that site.
    """

    def __init__(self, sites: Sequence[str], compute) -> None:
        self._sites = list(sites)
        self._compute = compute
        self._overrides: dict[str, torch.Tensor] = {}

    def select(self, site: str, prompts: slice = slice(None),
               feature_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``[p, pos, k]``: the prompts ``prompts`` and features ``feature_ids`` (all: None)."""
        if site in self._overrides:
            values = self._overrides[site][prompts]
            return values if feature_ids is None else values[..., feature_ids]
        return self._compute(site, prompts, feature_ids)

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self._sites:
            raise KeyError(site)
        return self.select(site)

    def __setitem__(self, site: str, value: torch.Tensor) -> None:
        if site not in self._sites:
            raise KeyError(site)
        self._overrides[site] = value

    def __delitem__(self, site: str) -> None:
        del self._overrides[site]

    def __iter__(self):
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._sites)


class PatchingExperiment:
    """Clean and corrupted runs of prompt pairs, cached, ready to patch feature sets.

    Args:
        model: an nnsight ``LanguageModel`` (from ``load_model``).
        dictionaries: ``{site: Dictionary}`` (or one ``Dictionary`` whose ``site`` is set).
        prompts: a DataFrame / list of rows / ``PromptPairs`` (see ``featcircuits.tasks.prompts``).
        source: ``"clean"`` (patching), ``"zero"``, ``"mean"`` (mean feature activation over
            the clean prompts' tokens) or ``"resample"`` (clean run of another prompt of the
            same length) — the latter three are ablations; or a tensor ``[n_features]``.
        positions: ``"all"``, ``"final"`` (the answer position), or a list of token indices
            (negative counts from each prompt's end).
        max_rows: most sequences per forward pass (feature sets × prompts), bounds memory.
        max_memory: budget for the working tensors (bytes, or ``"2GB"``; default
            ``memory.default_max_memory()``): sets how many rows run per forward pass and
            how many prompts and features are encoded at once. See ``docs/memory.md``.
        seed: for ``"resample"``.
        runs: a ``RunCache`` of the same prompts to reuse (covering these sites).

    Only activations ``[n, pos, d_model]`` are cached; feature activations
    (``clean_features``, ``corrupt_features``, ``source_features``) are encoded on demand,
    in blocks that fit the budget.
    """

    def __init__(self, model, dictionaries: Mapping[str, Dictionary] | Dictionary,
                 prompts, *, source: str | torch.Tensor = "clean",
                 positions: str | Sequence[int] = "all", max_rows: int = 1024,
                 max_memory: int | str | None = None,
                 seed: int = 0, progress: bool = True, runs: RunCache | None = None) -> None:
        if isinstance(dictionaries, Dictionary):
            if dictionaries.site is None:
                raise ParameterError("the dictionary has no site",
                                     hint="pass {site: dictionary} or set dictionary.site")
            dictionaries = {dictionaries.site: dictionaries}
        if not dictionaries:
            raise ParameterError("no dictionaries given", hint="pass {site: dictionary}")
        if max_rows < 1:
            raise ParameterError(f"max_rows must be >= 1, got {max_rows}")
        self.max_memory = parse_memory(max_memory)
        self.model = model
        self.dictionaries = {str(Site.parse(site)): dictionary
                             for site, dictionary in dictionaries.items()}
        self.sites = sorted(self.dictionaries, key=lambda name: Site.parse(name).depth)
        for site, dictionary in self.dictionaries.items():
            check_dictionary_fits(dictionary, model, site)
        # features are encoded where each dictionary reads (a transcoder's input site)
        self.input_sites = {site: str(input_site_of(self.dictionaries[site], site))
                            for site in self.sites}
        needed = sorted(set(self.sites) | set(self.input_sites.values()))
        if runs is None:
            runs = RunCache(model, prompts, needed)
        elif not set(needed) <= set(runs.sites):
            raise ParameterError(f"the run cache covers sites {runs.sites}, not {needed}",
                                 hint="build RunCache(model, prompts, sites) with every site")
        self.runs = runs
        self.prompts: PromptPairs = runs.prompts
        self.device = self.prompts.device
        self.clean_logits, self.corrupt_logits = runs.clean_logits, runs.corrupt_logits
        self.clean_features = SiteFeatures(self.sites, self._encoder(runs.clean_activations))
        self.corrupt_features = SiteFeatures(self.sites,
                                             self._encoder(runs.corrupt_activations))
        self.max_rows = int(max_rows)
        self.progress = progress
        self.position_mask = _position_mask(self.prompts, positions)
        self._sources = {site: self._source(site, source, seed) for site in self.sites}
        self.source_features = SiteFeatures(self.sites, self._source_block)
        # run layers before the first patched site once per chunk (not through transcoders,
        # whose output site sits inside a block that keeps its untiled residual)
        self._tile_at_site = all(self.input_sites[site] == site for site in self.sites)
        self._change_cache: dict[str, torch.Tensor] = {}

    def _encoder(self, activations: Mapping[str, torch.Tensor]):
        @torch.no_grad()
        def compute(site: str, prompts: slice, feature_ids: torch.Tensor | None):
            return self.dictionaries[site].encode_features(
                activations[self.input_sites[site]][prompts], feature_ids)
        return compute

    def _source(self, site: str, source: str | torch.Tensor, seed: int):
        """How the source features at ``site`` are made: ``("clean",)``, ``("vector", [F])``
        (the same values at every prompt and position), ``("tensor", t)`` (``t``
        broadcastable to ``[n, pos, F]``) or ``("resample", index [n])``."""
        n_features = self.dictionaries[site].n_features
        if isinstance(source, torch.Tensor):
            if source.shape[-1] != n_features:
                raise ParameterError(f"source has {source.shape[-1]} features, dictionary at "
                                     f"{site} has {n_features}")
            source = source.detach().float().to(self.device)
            return ("vector", source) if source.ndim == 1 else ("tensor", source)
        if source == "clean":
            return ("clean",)
        if source == "zero":
            return ("vector", torch.zeros(n_features, device=self.device))
        if source == "mean":
            return ("vector", self._mean_features(site))
        if source == "resample":
            return ("resample", _resample_index(self.prompts.lengths, seed))
        raise ParameterError(f"unknown source {source!r}", hint=f"use one of {', '.join(SOURCES)}"
                             " or a tensor [n_features]")

    @torch.no_grad()
    def _mean_features(self, site: str) -> torch.Tensor:
        """``[F]`` mean clean feature activation over the real tokens (blockwise)."""
        mask = self.prompts.token_mask
        total = torch.zeros(self.dictionaries[site].n_features, dtype=torch.float64,
                            device=self.device)
        for prompts, ids in self.feature_blocks(site):
            values = self.clean_features.select(site, prompts, ids)[mask[prompts]]
            total[slice(None) if ids is None else ids] += values.double().sum(0)
        return (total / mask.sum()).float()

    def _source_block(self, site: str, prompts: slice, feature_ids: torch.Tensor | None):
        kind = self._sources[site]
        if kind[0] == "clean":
            return self.clean_features.select(site, prompts, feature_ids)
        if kind[0] == "resample":
            index = kind[1][prompts]
            with torch.no_grad():
                return self.dictionaries[site].encode_features(
                    self.runs.clean_activations[self.input_sites[site]][index], feature_ids)
        values = kind[1] if feature_ids is None else kind[1][..., feature_ids]
        n, width = self.prompts.clean_ids.shape
        return values.expand(n, width, values.shape[-1])[prompts]

    def feature_blocks(self, site: str, temporaries: int = 4):
        """``(prompt slice, feature ids or None)`` blocks that cover ``[n, pos, F]`` at
        ``site`` with ``temporaries`` such tensors within ``max_memory``; features are split
        only for dictionaries that can encode a subset (``Dictionary.separable``)."""
        dictionary = self.dictionaries[site]
        n, width = self.prompts.clean_ids.shape
        n_features = dictionary.n_features
        per_prompt = FLOAT_BYTES * temporaries * width * n_features
        if per_prompt <= self.max_memory or not dictionary.separable:
            step = min(n, rows_per_chunk(self.max_memory, per_prompt))
            for start in range(0, n, step):
                yield slice(start, start + step), None
            return
        features = rows_per_chunk(self.max_memory, FLOAT_BYTES * temporaries * width)
        for start in range(n):
            for first in range(0, n_features, features):
                yield slice(start, start + 1), torch.arange(
                    first, min(first + features, n_features), device=self.device)

    # --------------------------------------------------------------- feature sets
    def feature_masks(self, feature_sets: Sequence[FeatureSet]) -> dict[str, torch.Tensor]:
        """``{site: [k, n_features]}`` 0/1 masks for ``k`` feature sets (validated)."""
        masks = {site: torch.zeros(len(feature_sets), self.dictionaries[site].n_features,
                                   device="cpu")
                 for site in self.sites}
        for row, feature_set in enumerate(feature_sets):
            if not isinstance(feature_set, Mapping):
                if len(self.sites) != 1:
                    raise FeatureIdError(
                        f"feature set {row} is a plain list but the experiment has sites "
                        f"{self.sites}", hint="pass {site: [feature ids]}")
                feature_set = {self.sites[0]: feature_set}
            for site, ids in feature_set.items():
                name = str(Site.parse(site))
                if name not in self.dictionaries:
                    raise FeatureIdError(f"feature set {row} names site {name!r}, which has no "
                                         f"dictionary", hint=f"sites: {self.sites}")
                checked = self.dictionaries[name].check_feature_ids(ids)
                masks[name][row, checked] = 1.0
        return masks

    def all_features(self, site: str | None = None) -> list[int]:
        """Ids of every feature at ``site`` (the only site when omitted)."""
        site = self._one_site(site)
        return list(range(self.dictionaries[site].n_features))

    def active_features(self, site: str | None = None) -> list[int]:
        """Features whose source and corrupted activations differ at some patched position.

        Patching any other feature is a no-op, so searches can skip them.
        """
        site = self._one_site(site)
        return torch.nonzero(self._changes(site).any(0)).flatten().tolist()

    def _one_site(self, site: str | None) -> str:
        if site is None:
            if len(self.sites) != 1:
                raise ParameterError(f"name a site: the experiment has {self.sites}")
            return self.sites[0]
        name = str(Site.parse(site))
        if name not in self.dictionaries:
            raise ParameterError(f"site {name!r} has no dictionary", hint=f"sites: {self.sites}")
        return name

    # --------------------------------------------------------------- evaluation
    def bytes_per_row(self, used: Mapping[str, int]) -> int:
        """Estimated working memory of one patched sequence, ``used[site]`` features patched
        at each site: the full-sequence logits, the model's activations, and at each site the
        encoded features (all of them unless the dictionary is ``separable``), the source
        values, their difference and its mask (float32)."""
        width = self.prompts.clean_ids.shape[1]
        vocab = self.clean_logits.shape[-1]
        values = vocab + 16 * width
        for site, count in used.items():
            dictionary = self.dictionaries[site]
            encoded = count if dictionary.separable else dictionary.n_features
            values += encoded + 3 * count + 24 * dictionary.d_model
        return FLOAT_BYTES * width * values

    def patched_logits(self, feature_sets: Sequence[FeatureSet]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer-position logits ``[k, n, vocab]`` and edit norms ``[k, n]`` for ``k`` sets.

        Every (feature set, prompt) pair is one row of a batched forward, ``max_rows`` rows
        per pass, with two savings that a loop of one trace per set cannot make:

        - rows are reduced to the features that actually change on their prompt (at the
          shallowest site, a feature whose source equals its corrupted value at every
          patched position is a no-op); rows that become identical run once, and rows left
          with nothing to patch take the cached corrupted logits without any forward;
        - the layers before the first patched site run once per prompt, and the activation
          is gathered into rows at the site.
        """
        masks = self.feature_masks(feature_sets)
        k = len(feature_sets)
        logits = einops.repeat(self.corrupt_logits, "n v -> k n v", k=k).clone()
        norms = torch.zeros(k, len(self.prompts), device=logits.device)
        for sets, prompts in self._row_blocks(masks):
            rows = self._unique_rows({site: mask[sets] for site, mask in masks.items()},
                                     prompts)
            if rows is None:
                continue
            prompt_index, row_masks, used, inverse = rows
            row_logits, row_norms = self._evaluate_rows(prompt_index, row_masks, used)
            patched = inverse >= 0
            set_ids = torch.arange(sets.start, min(sets.stop, k), device="cpu")
            set_of_row = set_ids.repeat_interleave(len(prompts))[patched]
            prompt_of_row = prompts.repeat(len(inverse) // len(prompts))[patched]
            logits[set_of_row, prompt_of_row] = row_logits[inverse[patched]]
            norms[set_of_row, prompt_of_row] = row_norms[inverse[patched]]
        return logits, norms

    def _row_blocks(self, masks: dict[str, torch.Tensor]) -> list[tuple[slice, torch.Tensor]]:
        """``(set slice, prompt ids)`` blocks whose (set, prompt) masks over the used
        features (bool, then int64 keys for deduplication, ~10 bytes per cell) fit in half
        of ``max_memory``; rows are deduplicated within a block."""
        k, n = next(iter(masks.values())).shape[0], len(self.prompts)
        used = sum(int(mask.any(0).sum()) for mask in masks.values())
        rows = rows_per_chunk(self.max_memory // 2, 10 * max(1, used))
        per_sets, per_prompts = split_rows(k, n, rows)
        return [(slice(s, s + per_sets), torch.arange(p, min(p + per_prompts, n), device="cpu"))
                for p in range(0, n, per_prompts) for s in range(0, k, per_sets)]

    def _unique_rows(self, masks: dict[str, torch.Tensor], prompts: torch.Tensor):
        """Distinct (prompt, effective feature mask) rows of ``k`` sets × ``n`` prompts.

        Only the prompts ``prompts [n]`` (ids) are considered. Returns ``None`` when nothing
        is patched, else ``prompt_index [R]``, ``{site: [R, u_site]}`` masks over the
        ``used`` feature ids ``{site: [u_site]}``, and ``inverse [k * n]`` mapping each (set,
        prompt) row to its unique row (``-1``: no-op).
        """
        k = next(iter(masks.values())).shape[0]
        n = len(prompts)
        used = {site: torch.nonzero(mask.any(0)).flatten() for site, mask in masks.items()}
        used = {site: ids for site, ids in used.items() if ids.numel() > 0}
        if not used:
            return None
        first = self.sites[0]
        parts = []
        for site, ids in used.items():
            part = einops.repeat(masks[site][:, ids].bool(), "k f -> k n f", n=n)
            if site == first:  # upstream of everything: live activations are the corrupted ones
                part = part & self._changes(site)[prompts][:, ids][None]
            parts.append(part)
        effective = einops.rearrange(torch.cat(parts, dim=-1), "k n f -> (k n) f")
        prompt_of_row = einops.repeat(prompts, "n -> (k n)", k=k)
        nonempty = effective.any(-1)
        inverse = torch.full((k * n,), -1, dtype=torch.long, device="cpu")
        if not bool(nonempty.any()):
            return None
        keys = torch.cat([prompt_of_row[nonempty, None], effective[nonempty].long()], dim=-1)
        unique, unique_inverse = torch.unique(keys, dim=0, return_inverse=True)
        inverse[nonempty] = unique_inverse
        prompt_index = unique[:, 0]
        row_masks, offset = {}, 1
        for site, ids in used.items():
            row_masks[site] = unique[:, offset:offset + len(ids)].float()
            offset += len(ids)
        return prompt_index, row_masks, used, inverse

    def _changes(self, site: str) -> torch.Tensor:
        """``[n, n_features]`` True where a feature's source differs from its corrupted value
        at some patched position of that prompt (patching it there is not a no-op); on the
        CPU, like the rest of the row bookkeeping."""
        if site not in self._change_cache:
            changes = torch.zeros(len(self.prompts), self.dictionaries[site].n_features,
                                  dtype=torch.bool, device="cpu")
            with torch.no_grad():
                for prompts, ids in self.feature_blocks(site):  # [p, pos, f] within budget
                    difference = (self.source_features.select(site, prompts, ids)
                                  - self.corrupt_features.select(site, prompts, ids)).abs()
                    difference = difference * self.position_mask[prompts][..., None]
                    columns = slice(None) if ids is None else slice(int(ids[0]),
                                                                     int(ids[-1]) + 1)
                    changes[prompts, columns] = (difference.amax(dim=1) > 0).cpu()
            self._change_cache[site] = changes
        return self._change_cache[site]

    def _evaluate_rows(self, prompt_index: torch.Tensor, row_masks: dict[str, torch.Tensor],
                       used: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[R, vocab]`` and edit norms ``[R]`` of ``R`` (prompt, mask) rows, at most
        ``max_rows`` per forward and as many as ``max_memory`` allows (``bytes_per_row``)."""
        per_chunk = min(self.max_rows, rows_per_chunk(
            self.max_memory, self.bytes_per_row({s: len(ids) for s, ids in used.items()})))
        starts = range(0, len(prompt_index), per_chunk)
        logits, norms = [], []
        for start in tqdm(starts, desc="patching", disable=not self.progress or len(starts) < 4,
                          leave=False):
            chunk = slice(start, start + per_chunk)
            chunk_logits, chunk_norms = self._patched_chunk(
                prompt_index[chunk], {site: mask[chunk] for site, mask in row_masks.items()},
                used)
            logits.append(chunk_logits)
            norms.append(chunk_norms)
        return torch.cat(logits), torch.cat(norms)

    @torch.no_grad()
    def _patched_chunk(self, prompt_index: torch.Tensor, masks: dict[str, torch.Tensor],
                       used: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        masks = {site: mask.to(self.device) for site, mask in masks.items()}
        plans = [(site, used[site], self.source_features.select(site, prompt_index, used[site]),
                  masks[site]) for site in self.sites if site in masks]
        final = self.prompts.final_positions[prompt_index]
        position_mask = self.position_mask[prompt_index]
        if self._tile_at_site:
            prompts, gather = torch.unique(prompt_index, return_inverse=True)
            try:
                return self._traced_chunk(plans, self.prompts.corrupt_ids[prompts], final,
                                          position_mask, gather)
            except RuntimeError:
                # some architectures (e.g. Gemma-2's sliding-window masks) build per-batch
                # tensors before the first block; gathering rows mid-forward then mismatches
                self._tile_at_site = False
        return self._traced_chunk(plans, self.prompts.corrupt_ids[prompt_index], final,
                                  position_mask, None)

    def _traced_chunk(self, plans, input_ids, final, position_mask, gather):
        squared_norms: list[torch.Tensor] = []
        with trace(self.model, input_ids):
            for index, (site, used, source, mask) in enumerate(plans):
                edit = patch_site(self.model, site, self.dictionaries[site], source, mask,
                                  position_mask, feature_ids=used,
                                  rows=gather if index == 0 else None)
                squared_norms.append(edit.float().pow(2).sum(dim=(-1, -2)).save())
            rows = torch.arange(len(final), device=final.device)
            logits = self.model.output.logits[rows, final].float().save()
        return logits, torch.stack(squared_norms).sum(0).sqrt()

    def evaluate(self, feature_sets: Sequence[FeatureSet], *, per_prompt: bool = False
                 ) -> pd.DataFrame:
        """Metrics for each feature set, averaged over prompts (or one row per prompt).

        Columns: ``set`` (index), ``n_features``, ``kl`` (KL(clean ‖ patched) at the answer
        position), ``logit_diff`` (answer − wrong answer), ``answer_prob``,
        ``edit_magnitude`` (‖x′ − x̄‖ over patched positions and sites).
        """
        feature_sets = list(feature_sets)
        logits, norms = self.patched_logits(feature_sets)
        metrics = self._metrics(logits)
        sizes = self.feature_masks(feature_sets)
        n_features = sum(mask.sum(1) for mask in sizes.values()).long()
        frame = pd.DataFrame({
            "set": np.repeat(np.arange(len(feature_sets)), len(self.prompts)),
            "prompt": np.tile(np.arange(len(self.prompts)), len(feature_sets)),
            "n_features": n_features.repeat_interleave(len(self.prompts)).numpy(),
            **{name: value.flatten().cpu().numpy() for name, value in metrics.items()},
            "edit_magnitude": norms.flatten().cpu().numpy(),
        })
        if per_prompt:
            return frame
        return frame.drop(columns="prompt").groupby("set", as_index=False).mean()

    def _metrics(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        prompts = self.prompts
        return {
            "kl": kl_divergence(self.clean_logits, logits),
            "logit_diff": logit_diff(logits, prompts.answer_ids, prompts.wrong_ids),
            "answer_prob": answer_prob(logits, prompts.answer_ids),
        }

    def baselines(self) -> pd.DataFrame:
        """Metrics of the clean and the corrupted run (means over prompts)."""
        rows = []
        for name, logits in (("clean", self.clean_logits), ("corrupt", self.corrupt_logits)):
            values = self._metrics(logits)
            rows.append({"run": name, **{key: float(v.mean()) for key, v in values.items()}})
        return pd.DataFrame(rows)

    def mean_kl(self, feature_sets: Sequence[FeatureSet]) -> torch.Tensor:
        """``[k]`` KL(clean ‖ patched) averaged over prompts, for ``k`` feature sets."""
        logits, _ = self.patched_logits(feature_sets)
        return kl_divergence(self.clean_logits, logits).mean(-1)


def _position_mask(prompts: PromptPairs, positions: str | Sequence[int]) -> torch.Tensor:
    mask = prompts.token_mask.float()
    if positions == "all":
        return mask
    if positions == "final":
        out = torch.zeros_like(mask)
        out[torch.arange(len(prompts), device=mask.device), prompts.final_positions] = 1.0
        return out
    if isinstance(positions, str):
        raise ParameterError(f"unknown positions {positions!r}",
                             hint="use 'all', 'final' or a list of token indices")
    out = torch.zeros_like(mask)
    for row, length in enumerate(prompts.lengths.tolist()):
        for position in positions:
            index = position + length if position < 0 else position
            if not 0 <= index < length:
                raise ParameterError(f"position {position} is outside prompt {row} "
                                     f"(length {length})",
                                     hint="use indices within the shortest prompt")
            out[row, index] = 1.0
    return out


def _resample_index(lengths: torch.Tensor, seed: int) -> torch.Tensor:
    """For each prompt, another prompt of the same length (itself if it has no peer)."""
    device, lengths = lengths.device, lengths.cpu()  # drawn on the CPU: same on every device
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.arange(len(lengths), device="cpu")
    for length in torch.unique(lengths):
        members = torch.nonzero(lengths == length).flatten()
        if len(members) > 1:
            shift = int(torch.randint(1, len(members), (1,), generator=generator, device="cpu"))
            order = members[torch.randperm(len(members), generator=generator, device="cpu")]
            index[order] = order.roll(shift)
    return index.to(device)
