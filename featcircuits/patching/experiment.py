"""``PatchingExperiment``: sub-rank-one feature patching of prompt pairs, many sets at once.

On the corrupted run, the activation x̄ at a site is replaced by::

    x′ = x̄ + Σ_{i∈F} (cᵢ − c̄ᵢ) fᵢ

(``featcircuits.engine.edits.patch_site``), with ``c`` from a source (the clean run, zero,
the dataset mean, or another prompt's clean run; ``featcircuits.engine.sources``). The
experiment is a client of the engine: the clean and corrupted runs are cached once
(``RunCache``), and many feature sets are evaluated in batched forward passes (feature sets
stacked along the batch dimension), sized by ``engine.memory.bytes_per_row`` and tiled at
the first patched site where the model allows (``engine.tiling.PrefixTiling``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import einops
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.io import check_dictionary_fits
from featcircuits.engine.cache import RunActivations, RunCache, SiteFeatures, feature_blocks
from featcircuits.engine.edits import add_carried, input_site_of, patch_site
from featcircuits.engine.memory import (
    FORWARD_ROWS,
    STREAM_SHARE,
    bytes_per_row,
    release_freed_memory,
    rows_per_chunk,
)
from featcircuits.engine.settings import RunSettings
from featcircuits.engine.sources import (
    PATCHING_SOURCES,
    check_source,
    position_mask,
    resample_index,
)
from featcircuits.engine.tiling import PrefixTiling
from featcircuits.errors import FeatureIdError, ParameterError
from featcircuits.model.loading import trace
from featcircuits.model.metrics import answer_prob, kl_divergence, logit_diff
from featcircuits.model.sites import Site
from featcircuits.patching.rows import row_blocks, unique_rows
from featcircuits.tasks.prompts import PromptPairs

__all__ = ["FeatureSet", "PatchingExperiment"]

FeatureSet = Sequence[int] | Mapping[str, Sequence[int]]
METRICS = ("kl", "logit_diff", "answer_prob")  # evaluate's, besides the edit magnitude


class PatchingExperiment:
    """Clean and corrupted runs of prompt pairs, cached, ready to patch feature sets.

    Args:
        model: an nnsight ``LanguageModel`` (from ``load_model``).
        dictionaries: ``{site: Dictionary}`` (or one ``Dictionary`` whose ``site`` is set).
        prompts: a DataFrame / list of rows / ``PromptPairs`` (see ``featcircuits.tasks.prompts``).
        source: ``"clean"`` (patching), ``"zero"``, ``"mean"`` (mean feature activation over
            the clean prompts' tokens) or ``"resample"`` (clean run of another prompt of the
            same length) — the latter three are ablations (``engine.sources``); or a tensor
            ``[n_features]``.
        positions: ``"all"``, ``"final"`` (the answer position), or a list of token indices
            (negative counts from each prompt's end).
        settings: how the runs execute (``engine.settings.RunSettings``): ``max_rows``, most
            sequences per forward pass (feature sets × prompts; default 1024);
            ``max_memory``, the budget for the working tensors, which sets how many rows run
            per forward pass and how many prompts and features are encoded at once (see
            ``docs/memory.md``); ``seed`` for ``"resample"``; ``progress`` bars.
        runs: a ``RunCache`` of the same prompts to reuse (covering these sites).

    At most the clean activations ``[n, pos, d_model]`` are cached (``RunCache`` says
    when); feature activations (``clean_features``, ``corrupt_features``,
    ``source_features``) are encoded on demand, in blocks that fit the budget.

    Attributes:
        rows_run: patched sequences run so far (a cost counter; rows that need no forward,
            and rows shared by identical feature sets, are not counted).
        forwards_run: patched forward passes run so far (a cost counter; a tiled pass that
            falls back to full batches counts, and so does its rerun).
    """

    def __init__(self, model, dictionaries: Mapping[str, Dictionary] | Dictionary,
                 prompts, *, source: str | torch.Tensor = "clean",
                 positions: str | Sequence[int] = "all", settings: RunSettings | None = None,
                 runs: RunCache | None = None) -> None:
        if settings is None:
            settings = RunSettings()
        elif not isinstance(settings, RunSettings):
            raise ParameterError(f"settings must be a RunSettings, got {settings!r}",
                                 hint="pass settings=RunSettings(max_rows=..., ...)")
        if isinstance(dictionaries, Dictionary):
            if dictionaries.site is None:
                raise ParameterError("the dictionary has no site",
                                     hint="pass {site: dictionary} or set dictionary.site")
            dictionaries = {dictionaries.site: dictionaries}
        if not dictionaries:
            raise ParameterError("no dictionaries given", hint="pass {site: dictionary}")
        self.settings = settings
        self.max_memory = settings.max_memory
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
            runs = RunCache(model, prompts, needed, max_memory=settings.max_memory)
        elif not set(needed) <= set(runs.sites):
            raise ParameterError(f"the run cache covers sites {runs.sites}, not {needed}",
                                 hint="build RunCache(model, prompts, sites) with every site")
        self.runs = runs
        # the cached runs count against the budget; a quarter of it is always left to work in
        self.max_memory = max(self.max_memory - runs.nbytes, self.max_memory // 4)
        self.prompts: PromptPairs = runs.prompts
        self.device = self.prompts.device
        self.clean_logits, self.corrupt_logits = runs.clean_logits, runs.corrupt_logits
        self.clean_features = SiteFeatures(self.sites, self._encoder(runs.clean_activations))
        self.corrupt_features = SiteFeatures(self.sites,
                                             self._encoder(runs.corrupt_activations))
        self.max_rows = settings.rows(1024)
        self.progress = settings.progress
        self.position_mask = position_mask(self.prompts, positions)
        self._sources = {site: self._source(site, source, settings.seed) for site in self.sites}
        self.source_features = SiteFeatures(self.sites, self._source_block)
        # run layers before the first patched site once per chunk (not through transcoders,
        # whose output site sits inside a block that keeps its untiled residual)
        self.tiling = PrefixTiling(model, all(self.input_sites[site] == site
                                              for site in self.sites))
        self._change_cache: dict[str, torch.Tensor] = {}
        self.rows_run = 0
        self.forwards_run = 0

    def _encoder(self, activations: RunActivations):
        @torch.no_grad()
        def compute(site: str, prompts: slice, feature_ids: torch.Tensor | None):
            return self.dictionaries[site].encode_features(
                activations.select(self.input_sites[site], prompts), feature_ids)
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
        check_source(source, PATCHING_SOURCES, where="a patching experiment",
                     extra=" or a tensor [n_features]")
        if source == "clean":
            return ("clean",)
        if source == "zero":
            return ("vector", torch.zeros(n_features, device=self.device))
        if source == "mean":
            return ("vector", self._mean_features(site))
        return ("resample", resample_index(self.prompts.lengths, seed))

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
                    self.runs.clean_activations.select(self.input_sites[site], index),
                    feature_ids)
        values = kind[1] if feature_ids is None else kind[1][..., feature_ids]
        n, width = self.prompts.clean_ids.shape
        return values.expand(n, width, values.shape[-1])[prompts]

    def feature_blocks(self, site: str, temporaries: int = 4, extra_per_prompt: int = 0):
        """``(prompt slice, feature ids or None)`` blocks that cover ``[n, pos, F]`` at
        ``site`` with ``temporaries`` such tensors within ``max_memory // STREAM_SHARE`` (at most ``SCAN_ROWS`` prompts)
        (``engine.cache.feature_blocks``; features are split only for dictionaries that can
        encode a subset, ``Dictionary.separable``). ``extra_per_prompt``: bytes each prompt
        of a block costs besides (e.g. the forward and backward pass of attribution), which
        also limits the prompts per block."""
        dictionary = self.dictionaries[site]
        n, width = self.prompts.clean_ids.shape
        # a scan over prompts takes a share of the budget (docs/memory.md)
        return feature_blocks(n, width, dictionary.n_features, separable=dictionary.separable,
                              budget=self.max_memory // STREAM_SHARE, device=self.device,
                              temporaries=temporaries, extra_per_prompt=extra_per_prompt)

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
        values, their difference and its mask (float32); a cross-layer transcoder's edit
        carried to each later site it writes counts as one more ``[T, d_model]``."""
        features, d_models = [], []
        for site, count in used.items():
            dictionary = self.dictionaries[site]
            encoded = count if dictionary.separable else dictionary.n_features
            features += [(encoded, 1), (count, 3)]
            d_models.append(dictionary.d_model)
            features += [(dictionary.d_model, 1) for _ in dictionary.later_writes]
        return bytes_per_row(self.prompts.clean_ids.shape[1], vocab=self.clean_logits.shape[-1],
                             features=features, d_models=d_models)

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

        The result is ``[k, n, vocab]``; ``evaluate`` and ``mean_kl`` reduce each block of
        rows to its metrics instead, so they hold nothing of that size.
        """
        masks = self.feature_masks(feature_sets)
        k = len(feature_sets)
        logits = einops.repeat(self.corrupt_logits, "n v -> k n v", k=k).clone()
        norms = torch.zeros(k, len(self.prompts), device=logits.device)
        for set_of_row, prompt_of_row, row_logits, row_norms in self._patched_cells(masks):
            logits[set_of_row, prompt_of_row] = row_logits
            norms[set_of_row, prompt_of_row] = row_norms
        return logits, norms

    def _patched_cells(self, masks: dict[str, torch.Tensor]):
        """Per deduplication block: set ids ``[r]``, prompt ids ``[r]`` (CPU), answer-position
        logits ``[r, vocab]`` and edit norms ``[r]`` of its patched (set, prompt) cells
        (cells with nothing to patch are left out: they keep the corrupted run)."""
        k = next(iter(masks.values())).shape[0]
        for sets, prompts in row_blocks(masks, len(self.prompts), self.max_memory):
            rows = unique_rows({site: mask[sets] for site, mask in masks.items()}, prompts,
                               self.sites[0], self._changes)
            if rows is None:
                continue
            prompt_index, row_masks, used, inverse = rows
            release_freed_memory()  # the deduplication's temporaries, before the forwards
            row_logits, row_norms = self._evaluate_rows(prompt_index, row_masks, used)
            patched = inverse >= 0
            set_ids = torch.arange(sets.start, min(sets.stop, k), device="cpu")
            set_of_row = set_ids.repeat_interleave(len(prompts))[patched]
            prompt_of_row = prompts.repeat(len(inverse) // len(prompts))[patched]
            yield (set_of_row, prompt_of_row, row_logits[inverse[patched]],
                   row_norms[inverse[patched]])
            del rows, row_masks, row_logits, row_norms
            release_freed_memory()  # the block's forwards (docs/memory.md)

    def _changes(self, site: str) -> torch.Tensor:
        """``[n, n_features]`` True where a feature's source differs from its corrupted value
        at some patched position of that prompt (patching it there is not a no-op); on the
        CPU, like the rest of the row bookkeeping."""
        if site not in self._change_cache:
            changes = torch.zeros(len(self.prompts), self.dictionaries[site].n_features,
                                  dtype=torch.bool, device="cpu")
            with torch.no_grad():
                for prompts, ids in self.feature_blocks(site):  # [p, pos, f] within budget
                    difference = torch.sub(self.source_features.select(site, prompts, ids),
                                           self.corrupt_features.select(site, prompts, ids))
                    difference.abs_().mul_(self.position_mask[prompts][..., None])
                    columns = slice(None) if ids is None else slice(int(ids[0]),
                                                                     int(ids[-1]) + 1)
                    changes[prompts, columns] = (difference.amax(dim=1) > 0).cpu()
            self._change_cache[site] = changes
        return self._change_cache[site]

    def _evaluate_rows(self, prompt_index: torch.Tensor, row_masks: dict[str, torch.Tensor],
                       used: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[R, vocab]`` and edit norms ``[R]`` of ``R`` (prompt, mask) rows, at most
        ``max_rows`` and ``FORWARD_ROWS`` per forward and as many as ``max_memory // (2 *
        STREAM_SHARE)`` allows (``bytes_per_row``): the forwards are steps of a scan over
        blocks of prompts, and each shares its scan's share of the budget with the block's
        deduplication tables (``row_blocks``), alive while the block's forwards run
        (docs/memory.md)."""
        per_chunk = min(self.max_rows, FORWARD_ROWS, rows_per_chunk(
            self.max_memory // (2 * STREAM_SHARE),
            self.bytes_per_row({s: len(ids) for s, ids in used.items()})))
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
            release_freed_memory()  # the forward's activations (docs/memory.md)
        return torch.cat(logits), torch.cat(norms)

    @torch.no_grad()
    def _patched_chunk(self, prompt_index: torch.Tensor, masks: dict[str, torch.Tensor],
                       used: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        masks = {site: mask.to(self.device) for site, mask in masks.items()}
        plans = [(site, used[site], self.source_features.select(site, prompt_index, used[site]),
                  masks[site]) for site in self.sites if site in masks]
        final = self.prompts.final_positions[prompt_index]
        position_mask = self.position_mask[prompt_index]
        def untiled():
            return self._traced_chunk(plans, self.prompts.corrupt_ids[prompt_index], final,
                                      position_mask, None)

        if not self.tiling.possible:
            return untiled()
        # the layers before the first patched site run once per distinct prompt
        prompts, gather = torch.unique(prompt_index, return_inverse=True)
        return self.tiling.run(
            lambda: self._traced_chunk(plans, self.prompts.corrupt_ids[prompts], final,
                                       position_mask, gather),
            untiled, rows=len(prompt_index), batch=len(prompts))

    def _traced_chunk(self, plans, input_ids, final, position_mask, gather):
        self.forwards_run += 1
        self.rows_run += len(final)
        squared_norms: list[torch.Tensor] = []
        # a cross-layer transcoder's features also write later sites: their edits are
        # carried there and added when the trace reaches them, in forward order
        by_site = {plan[0]: (index, plan) for index, plan in enumerate(plans)}
        later = {name for plan in plans for name in self.dictionaries[plan[0]].later_writes}
        carry: dict[str, torch.Tensor] = {}
        with trace(self.model, input_ids):
            for site in sorted(set(by_site) | later, key=lambda name: Site.parse(name).depth):
                edit = None
                if site in by_site:
                    index, (_, used, source, mask) = by_site[site]
                    edit = patch_site(self.model, site, self.dictionaries[site], source, mask,
                                      position_mask, feature_ids=used,
                                      rows=gather if index == 0 else None, carry=carry)
                carried = add_carried(self.model, site, carry)
                if carried is not None:
                    edit = carried if edit is None else edit + carried
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
        masks = self.feature_masks(feature_sets)
        metrics, norms = self._patched_metrics(masks)
        n_features = sum(mask.sum(1) for mask in masks.values()).long()
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

    def _metrics(self, logits: torch.Tensor, prompts: torch.Tensor | None = None,
                 names: Sequence[str] = METRICS) -> dict[str, torch.Tensor]:
        """``{name: [..., n]}`` metrics of logits ``[..., n, vocab]`` (every prompt) or,
        with ``prompts [r]`` (ids), ``{name: [r]}`` of rows ``[r, vocab]`` of those prompts."""
        clean, answer, wrong = self.clean_logits, self.prompts.answer_ids, self.prompts.wrong_ids
        if prompts is not None:
            prompts = prompts.to(logits.device)
            clean, answer, wrong = clean[prompts], answer[prompts], wrong[prompts]
        compute = {"kl": lambda: kl_divergence(clean, logits),
                   "logit_diff": lambda: logit_diff(logits, answer, wrong),
                   "answer_prob": lambda: answer_prob(logits, answer)}
        return {name: compute[name]() for name in names}

    def _patched_metrics(self, masks: dict[str, torch.Tensor], names: Sequence[str] = METRICS
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({name: [k, n]}, norms [k, n])`` for the sets of ``masks``: the metrics of each
        block of patched rows are computed as it comes (``_patched_cells``), so nothing
        ``[k, n, vocab]`` is held; unpatched cells take the corrupted run's metrics."""
        k = next(iter(masks.values())).shape[0]
        metrics = {name: einops.repeat(values, "n -> k n", k=k).clone()
                   for name, values in self._metrics(self.corrupt_logits, names=names).items()}
        norms = torch.zeros(k, len(self.prompts), device=self.corrupt_logits.device)
        for set_of_row, prompt_of_row, row_logits, row_norms in self._patched_cells(masks):
            for name, values in self._metrics(row_logits, prompt_of_row, names).items():
                metrics[name][set_of_row, prompt_of_row] = values
            norms[set_of_row, prompt_of_row] = row_norms
        return metrics, norms

    def baselines(self) -> pd.DataFrame:
        """Metrics of the clean and the corrupted run (means over prompts)."""
        rows = []
        for name, logits in (("clean", self.clean_logits), ("corrupt", self.corrupt_logits)):
            values = self._metrics(logits)
            rows.append({"run": name, **{key: float(v.mean()) for key, v in values.items()}})
        return pd.DataFrame(rows)

    def mean_kl(self, feature_sets: Sequence[FeatureSet]) -> torch.Tensor:
        """``[k]`` KL(clean ‖ patched) averaged over prompts, for ``k`` feature sets."""
        metrics, _ = self._patched_metrics(self.feature_masks(list(feature_sets)), ("kl",))
        return metrics["kl"].mean(-1)
