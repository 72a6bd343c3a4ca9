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
    forward_bytes_per_row,
    parse_memory,
    release_freed_memory,
    rows_per_chunk,
    scan_rows,
)
from featcircuits.model.loading import check_positions, model_device, trace
from featcircuits.model.sites import Site
from featcircuits.tasks.prompts import PromptPairs, tokenize_prompts

__all__ = ["RunCache", "SiteFeatures", "feature_blocks", "select_features"]


class RunCache:
    """Clean and corrupted runs of prompt pairs: activations at sites, answer logits.

    Computed once and shared by every experiment on the same prompts (e.g. when comparing
    bases at one site), so the clean and corrupted forwards are never rerun.

    ``max_memory`` (bytes, a size string or ``None`` for the default budget) bounds the
    forward passes: prompts run in chunks of ``scan_rows(max_memory, forward_bytes_per_row(...))``
    sequences (a quarter of the budget, at most ``SCAN_ROWS``), so a forward over thousands
    of prompts never holds every prompt's intermediate activations at once, and 2,000
    prompts run the same chunks as 100. Chunks give the same values as
    one pass (rows of a forward are independent), up to float rounding of differently
    sized batches. What is kept, ``nbytes``, counts against the budget of the experiments
    that use the cache (``PatchingExperiment`` sizes its working tensors with
    ``max_memory − nbytes``).

    Attributes:
        clean_logits, corrupt_logits: ``[n, vocab]`` logits at each answer position.
        clean_activations, corrupt_activations: ``{site: [n, pos, d_model]}``.
        chunk_prompts: prompts per forward pass.
        chunks_run: forward passes run (both runs together).
        nbytes: bytes held by the cached tensors.
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
        budget = parse_memory(max_memory)
        width = self.prompts.clean_ids.shape[1]
        self.chunk_prompts = scan_rows(budget, forward_bytes_per_row(model, width,
                                                                     backward=False))
        self.chunks_run = 0
        self.clean_logits, self.clean_activations = self._run(model, self.prompts.clean_ids,
                                                              "clean")
        self.corrupt_logits, self.corrupt_activations = self._run(
            model, self.prompts.corrupt_ids, "corrupt")

    @property
    def nbytes(self) -> int:
        tensors = [self.clean_logits, self.corrupt_logits, *self.clean_activations.values(),
                   *self.corrupt_activations.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def _run(self, model, input_ids: torch.Tensor, run: str
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = len(input_ids)
        logits: torch.Tensor | None = None
        activations: dict[str, torch.Tensor] = {}
        for start in range(0, n, self.chunk_prompts):
            chunk = slice(start, min(n, start + self.chunk_prompts))
            chunk_logits, chunk_activations = self._run_chunk(model, input_ids[chunk],
                                                              self.prompts.final_positions[chunk])
            self.chunks_run += 1
            if logits is None:  # preallocated once, filled chunk by chunk
                logits = chunk_logits.new_empty((n, *chunk_logits.shape[1:]))
                activations = {site: value.new_empty((n, *value.shape[1:]))
                               for site, value in chunk_activations.items()}
            logits[chunk] = chunk_logits
            for site, value in chunk_activations.items():
                # checked chunk by chunk: isfinite's temporaries (a float copy among them)
                # then follow the chunk, not the n prompts (docs/memory.md)
                check_finite_activations(value, site=site, run=run,
                                         token_mask=self.prompts.token_mask[chunk],
                                         first_prompt=start)
                activations[site][chunk] = value
            del chunk_logits, chunk_activations
            release_freed_memory()  # the chunk's intermediates (docs/memory.md)
        return logits, activations

    def _run_chunk(self, model, input_ids: torch.Tensor, final: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        activations: list[torch.Tensor] = []
        with trace(model, input_ids):
            for site in self.sites:
                activations.append(Site.parse(site).read(model).save())
            rows = torch.arange(len(final), device=final.device)
            logits = model.output.logits[rows, final].float().save()
        return logits, dict(zip(self.sites, activations))


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
