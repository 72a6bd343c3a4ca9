"""``RunCache``: the clean and corrupted runs of prompt pairs, computed once and shared.

``SiteFeatures`` is the mapping through which clients read feature activations of a cached
run (``PatchingExperiment``, ``CircuitRuns``): encoded on demand, in blocks, so nothing
``[n, pos, n_features]``-sized is kept. ``feature_blocks`` says how to cover one site's
``[n, pos, n_features]`` in blocks within a budget, ``select_features`` reads one block of
either a ``SiteFeatures`` or a plain ``{site: tensor}`` mapping.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence

import torch

from featcircuits.engine.edits import check_finite_activations
from featcircuits.engine.memory import (
    FLOAT_BYTES,
    SCAN_ROWS,
    STREAM_SHARE,
    forward_bytes_per_row,
    parse_memory,
    release_freed_memory,
    rows_per_chunk,
    scan_rows,
)
from featcircuits.errors import ParameterError
from featcircuits.model.loading import check_positions, model_device, trace
from featcircuits.model.sites import Site
from featcircuits.tasks.prompts import PromptPairs, tokenize_prompts

__all__ = ["RunActivations", "RunCache", "SiteFeatures", "feature_blocks", "select_features"]


class RunCache:
    """Clean and corrupted runs of prompt pairs: answer logits, and activations at sites.

    Computed once and shared by every experiment on the same prompts (e.g. when comparing
    bases at one site), so the clean and corrupted forwards are not rerun per experiment.

    ``max_memory`` (bytes, a size string or ``None`` for the default budget) bounds what
    the cache runs and keeps:

    - the forwards run in prompt chunks of ``scan_rows(max_memory, forward_bytes_per_row(...))``
      sequences (a quarter of the budget, at most ``SCAN_ROWS``), so a forward over
      thousands of prompts never holds every prompt's intermediate activations at once;
    - the answer logits of both runs are kept (``[n, vocab]`` each);
    - the clean run's activations are kept while they take at most a quarter of the budget
      (``STREAM_SHARE``); beyond that they are streamed: read by a forward over the prompts
      asked for, stopped after the deepest cached site;
    - the corrupted run's activations are never kept: they are read only by scans that
      visit each block of prompts once or twice (the no-op table, attribution scores), a
      patched forward reads x̄ live from its own run, so keeping ``[n, pos, d_model]`` per
      site for them would make memory grow with the prompts for a prefix forward per block.

    Blocks are read through ``clean_activations`` / ``corrupt_activations``
    (``RunActivations``: ``.select(site, prompts)``); the last block read (at most
    ``SCAN_ROWS`` prompts) is kept, so the clean and corrupted features of one block cost
    one forward each. Recomputed values are those of a forward over fewer or more prompts
    than the cache's chunks: equal up to float rounding of differently sized batches (rows
    of a forward are independent). What is kept, ``nbytes``, counts against the budget of
    the experiments that use the cache (``PatchingExperiment`` works within
    ``max_memory − nbytes``). Every activation of both runs is checked for NaN/inf when
    the cache is built.

    Attributes:
        clean_logits, corrupt_logits: ``[n, vocab]`` logits at each answer position.
        clean_activations, corrupt_activations: ``RunActivations``, read-only mappings
            ``{site: [n, pos, d_model]}`` whose ``select(site, prompts)`` reads a block.
        chunk_prompts: prompts per forward pass.
        chunks_run: forward passes run (both runs together, recomputations included).
        nbytes: bytes held by the kept tensors.
    """

    def __init__(self, model, prompts, sites: Sequence[str | Site],
                 max_memory: int | str | None = None) -> None:
        # prompt tensors live where the model runs, like every tensor computed from them
        pairs = tokenize_prompts(model.tokenizer, prompts)
        check_positions(model, pairs.lengths, what="prompt pair",
                        texts=pairs.frame["clean"].tolist())
        self.prompts: PromptPairs = pairs.to(model_device(model))
        self.sites = sorted({str(Site.parse(site)) for site in sites},
                            key=lambda name: Site.parse(name).depth)
        self._model = model
        budget = parse_memory(max_memory)
        self._keep_budget = budget // STREAM_SHARE
        width = self.prompts.clean_ids.shape[1]
        self.chunk_prompts = scan_rows(budget, forward_bytes_per_row(model, width,
                                                                     backward=False))
        self.chunks_run = 0
        self._recent: tuple[tuple, dict[str, torch.Tensor]] | None = None
        self.clean_logits, kept = self._run("clean", keep=True)
        self.corrupt_logits, _ = self._run("corrupt", keep=False)
        self._kept: dict[str, dict[str, torch.Tensor] | None] = {"clean": kept,
                                                                 "corrupt": None}
        self.clean_activations = RunActivations(self, "clean")
        self.corrupt_activations = RunActivations(self, "corrupt")

    @property
    def nbytes(self) -> int:
        tensors = [self.clean_logits, self.corrupt_logits,
                   *(self._kept["clean"] or {}).values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _ids(self, run: str) -> torch.Tensor:
        return self.prompts.clean_ids if run == "clean" else self.prompts.corrupt_ids

    @torch.no_grad()
    def _run(self, run: str, *, keep: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Logits ``[n, vocab]`` of the run, and (``keep`` and while they fit the keep
        budget) ``{site: [n, pos, d]}``; every chunk's activations are checked finite."""
        input_ids = self._ids(run)
        n = len(input_ids)
        logits: torch.Tensor | None = None
        activations: dict[str, torch.Tensor] | None = None
        for start in range(0, n, self.chunk_prompts):
            chunk = slice(start, min(n, start + self.chunk_prompts))
            chunk_logits, chunk_activations = self._forward(input_ids[chunk],
                                                            self.prompts.final_positions[chunk])
            if logits is None:  # preallocated once, filled chunk by chunk
                logits = chunk_logits.new_empty((n, *chunk_logits.shape[1:]))
                needed = sum(n * value[0].numel() * value.element_size()
                             for value in chunk_activations.values())
                if keep and needed <= self._keep_budget:
                    activations = {site: value.new_empty((n, *value.shape[1:]))
                                   for site, value in chunk_activations.items()}
            logits[chunk] = chunk_logits
            for site, value in chunk_activations.items():
                # checked chunk by chunk: isfinite's temporaries (a float copy among them)
                # then follow the chunk, not the n prompts (docs/memory.md)
                check_finite_activations(value, site=site, run=run,
                                         token_mask=self.prompts.token_mask[chunk],
                                         first_prompt=start)
                if activations is not None:
                    activations[site][chunk] = value
            del chunk_logits, chunk_activations
            release_freed_memory()  # the chunk's intermediates (docs/memory.md)
        return logits, activations

    def _forward(self, input_ids: torch.Tensor, final: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """One forward of ``[p, T]`` prompts: ``{site: [p, pos, d]}`` and, given the answer
        positions ``final [p]``, the logits there ``[p, vocab]`` (else ``None``: the
        forward stops after the deepest site)."""
        model = self._model
        activations: list[torch.Tensor] = []
        logits = None
        with trace(model, input_ids) as tracer:
            for site in self.sites:
                activations.append(Site.parse(site).read(model).save())
            if final is None:
                tracer.stop()  # nothing after the deepest site is read
            else:
                rows = torch.arange(len(final), device=final.device)
                logits = model.output.logits[rows, final].float().save()
        self.chunks_run += 1
        return logits, dict(zip(self.sites, activations))

    @torch.no_grad()
    def activations(self, run: str, prompts: slice | torch.Tensor = slice(None)
                    ) -> dict[str, torch.Tensor]:
        """``{site: [p, pos, d]}`` activations of ``run`` (``"clean"`` or ``"corrupt"``)
        for the prompts ``prompts`` (a slice or ids ``[p]``): kept ones indexed, others
        read by forwards of at most ``chunk_prompts`` distinct prompts."""
        if run not in self._kept:
            raise ParameterError(f"unknown run {run!r}", hint="use 'clean' or 'corrupt'")
        kept = self._kept[run]
        if kept is not None:
            return {site: value[prompts] for site, value in kept.items()}
        key, gather = None, None
        if isinstance(prompts, slice):
            key = (run, *prompts.indices(len(self.prompts)))
            if self._recent is not None and self._recent[0] == key:
                return self._recent[1]
            ids = self._ids(run)[prompts]
        else:  # ids, perhaps repeated: each distinct prompt runs once
            distinct, gather = torch.unique(
                torch.as_tensor(prompts, device=self.prompts.device).long(),
                return_inverse=True)
            ids = self._ids(run)[distinct]
        self._recent = None  # the previous block is not held beside this one
        count = len(ids)
        if not count:  # one prompt is read for the shapes, none of its rows returned
            ids = self._ids(run)[:1]
        chunks = [self._forward(ids[start:start + self.chunk_prompts])[1]
                  for start in range(0, len(ids), self.chunk_prompts)]
        values = {site: torch.cat([chunk[site] for chunk in chunks])[:count]
                  for site in self.sites}
        if gather is not None:
            values = {site: value[gather] for site, value in values.items()}
        if key is not None and count <= SCAN_ROWS:
            self._recent = (key, values)
        return values


class RunActivations(Mapping):
    """``{site: [n, pos, d_model]}``: one run's activations in a ``RunCache``, read-only.

    ``select(site, prompts)`` reads a block (``[p, pos, d_model]``; kept values are
    indexed, streamed ones are computed by a forward, see ``RunCache``); ``[site]`` reads
    every prompt. ``kept`` says whether the cache holds them.
    """

    def __init__(self, cache: RunCache, run: str) -> None:
        self._cache = cache
        self._run = run

    @property
    def kept(self) -> bool:
        return self._cache._kept[self._run] is not None

    def select(self, site: str, prompts: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """``[p, pos, d_model]``: the activations at ``site`` of the prompts ``prompts``."""
        if site not in self._cache.sites:
            raise KeyError(site)
        return self._cache.activations(self._run, prompts)[site]

    def __getitem__(self, site: str) -> torch.Tensor:
        return self.select(site)

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache.sites)

    def __len__(self) -> int:
        return len(self._cache.sites)


class SiteFeatures(MutableMapping):
    """``{site: [n, pos, n_features]}`` feature activations of one kind, computed on demand.

    ``experiment.clean_features[site]`` encodes the cached activations each time it is read
    (nothing ``[n, pos, n_features]``-sized is kept, which for wide dictionaries would not
    fit); ``select(site, prompts, feature_ids)`` encodes only a block. Assigning a tensor
    (``features[site] = t``) overrides the computed values for that site.
    """

    def __init__(self, sites: Sequence[str], compute,
                 shared: Mapping[str, torch.Tensor] | None = None) -> None:
        self._sites = list(sites)
        self._compute = compute
        self._shared = shared
        self._overrides: dict[str, torch.Tensor] = {}

    def shared(self, site: str) -> torch.Tensor | None:
        """``[F]`` or ``[pos, F]``: the values every prompt has at ``site`` (a mean or zero
        source), or ``None`` where they differ between prompts (or were overridden)."""
        if self._shared is None or site in self._overrides:
            return None
        return self._shared.get(site)

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


def select_features(features: Mapping[str, torch.Tensor], site: str,
                    prompts: slice = slice(None),
                    feature_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[p, pos, k]``: prompts ``prompts`` and features ``feature_ids`` (all: ``None``) of
    ``features[site]``, encoding only that block for a ``SiteFeatures`` (a plain
    ``{site: [n, pos, F]}`` mapping is indexed)."""
    if isinstance(features, SiteFeatures):
        return features.select(site, prompts, feature_ids)
    values = features[site][prompts]
    return values if feature_ids is None else values[..., feature_ids]


def feature_blocks(n: int, width: int, n_features: int, *, separable: bool, budget: int,
                   device, temporaries: int = 4, extra_per_prompt: int = 0
                   ) -> Iterator[tuple[slice, torch.Tensor | None]]:
    """``(prompt slice, feature ids [k] or None)`` blocks covering ``[n, width, n_features]``
    with ``temporaries`` float32 tensors of a block's shape within ``budget`` bytes.

    Blocks of whole prompts (every feature, ``None``) while one prompt fits, or always for
    a dictionary that cannot encode a subset (``separable`` false); else one prompt at a
    time in blocks of features. ``extra_per_prompt``: bytes each prompt of a block costs
    besides (e.g. a forward and backward pass), which also limits the prompts per block.
    """
    per_prompt = FLOAT_BYTES * temporaries * width * n_features
    if per_prompt <= budget or not separable:
        # at most SCAN_ROWS prompts whatever the budget, so a scan over 2,000 prompts uses
        # the blocks one over 100 does (docs/memory.md)
        step = min(n, SCAN_ROWS, rows_per_chunk(budget, per_prompt + extra_per_prompt))
        for start in range(0, n, step):
            yield slice(start, min(start + step, n)), None
            release_freed_memory()  # what the caller's block freed (docs/memory.md)
        return
    features = rows_per_chunk(budget, FLOAT_BYTES * temporaries * width)
    for start in range(n):
        for first in range(0, n_features, features):
            yield slice(start, start + 1), torch.arange(
                first, min(first + features, n_features), device=device)
        release_freed_memory()
