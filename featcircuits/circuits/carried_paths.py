"""Integrated-gradient paths of cross-layer transcoder (CLT) sites (``engine.carried``).

Integrated gradients interpolate a site between its clean activation (α = 0) and the one
with every node there ablated (α = 1). Ablating every node of CLT layer ``L`` also edits
every later site its features write, by ``(s_L − c_L) @ W_dec[L → L']``; so on the path of
``mlp_out.L`` each written site ``mlp_out.L'`` gets ``−α (c_L − s_L) @ W_dec[L → L']`` added
(on top of what the model computes there, or of the clean value where the site is held),
and the gradient is taken at every written site. A feature's estimate is then
``(c − s) · Σ_{L'} ḡ_L' · W_dec[L → L']`` with ``ḡ`` averaged over the path.
"""

from __future__ import annotations

import torch

from featcircuits.engine.circuit_trace import SiteOps
from featcircuits.engine.runs import CircuitRuns

__all__ = ["carried_path_edits", "carried_path_ops"]


def carried_path_edits(runs: CircuitRuns, site: str, ablation: str, alphas: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """``{later site: [(k n), T, d]}`` the edit that copy ``k`` (at point ``alphas[k]``) of
    ``site``'s path adds at each later site its features write (empty for other sites)."""
    dictionary = runs.dictionaries[site]
    if not dictionary.later_writes:
        return {}
    source_features, _ = runs.sources(ablation)
    diff = runs.features[site] - source_features[site]                     # [n, T, F]
    edits = {}
    for later, directions in dictionary.later_writes.items():
        full = diff @ directions.to(diff.dtype)                            # [n, T, d]
        edits[later] = -(alphas[:, None, None, None] * full[None]).reshape(
            len(alphas) * runs.n, runs.width, -1)
    return edits


def carried_path_ops(runs: CircuitRuns, site: str, ablation: str, alphas: torch.Tensor,
                     held: bool = False) -> tuple[dict[str, SiteOps], dict[str, torch.Tensor]]:
    """``(ops, leaves)``: for each later site ``site``'s features write, a ``SiteOps`` that
    adds the path's edit (``carried_path_edits``) through its ``delta``, and the zero leaf
    ``[(k n), T, d]`` in that delta whose gradient is the gradient at the site. ``held``:
    the site is first overwritten with its clean value (the other sites between an
    interpolated site and an edge's downstream node are held clean)."""
    ops: dict[str, SiteOps] = {}
    leaves: dict[str, torch.Tensor] = {}
    for later, edit in carried_path_edits(runs, site, ablation, alphas).items():
        leaf = torch.zeros(edit.shape, device=runs.device, requires_grad=True)
        leaves[later] = leaf
        overwrite = None
        if held:
            overwrite = runs.activations[later].repeat(len(alphas), 1, 1)
        with torch.enable_grad():  # the delta must stay a function of the leaf
            ops[later] = SiteOps(overwrite=overwrite, delta=edit.detach() + leaf)
    return ops, leaves
