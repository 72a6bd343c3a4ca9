"""``RunCache``: the clean and corrupted runs of prompt pairs, computed once and shared.

``SiteFeatures`` is the mapping through which clients read feature activations of a cached
run: encoded on demand, in blocks, so nothing ``[n, pos, n_features]``-sized is kept.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

import torch

from featcircuits.engine.edits import check_finite_activations
from featcircuits.model.loading import check_positions, model_device, trace
from featcircuits.model.sites import Site
from featcircuits.tasks.prompts import PromptPairs, tokenize_prompts

__all__ = ["RunCache", "SiteFeatures"]


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
        pairs = tokenize_prompts(model.tokenizer, prompts)
        check_positions(model, pairs.lengths, what="prompt pair",
                        texts=pairs.frame["clean"].tolist())
        self.prompts: PromptPairs = pairs.to(model_device(model))
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
