"""Exact and attribution weights of every candidate edge, for comparing the methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from featcircuits.circuits.ablation import ablation_effects
from featcircuits.circuits.attribution import gradient_edges
from featcircuits.circuits.nodes import candidate_nodes, site_depth, upstream_sites
from featcircuits.engine.runs import CircuitRuns

__all__ = ["all_edge_weights"]


def all_edge_weights(runs: CircuitRuns, *, ablation: str = "zero", positional: bool = False,
                     candidates: Mapping[str, Sequence[int]] | None = None,
                     errors: bool = True, method: str = "attribution", steps: int = 10
                     ) -> dict[str, dict[tuple, float]]:
    """Exact and attribution weights of every edge between candidate nodes (no pruning):
    ``{"exact": {...}, "attribution": {...}}``, the attribution ones by ``method``
    (``"attribution"`` or ``"ig"`` with ``steps`` points). For comparing the methods; costs
    one ablation per candidate and one backward per candidate (``steps`` for ``ig``)."""
    nodes = {site: candidate_nodes(runs, site, ablation=ablation, positional=positional,
                                   candidates=candidates, errors=errors)
             for site in upstream_sites(runs)}
    exact: dict[tuple, float] = {}
    for site, group in nodes.items():
        downstream = {j: g for j, g in nodes.items() if site_depth(j) > site_depth(site)}
        values, columns = ablation_effects(runs, site, group, downstream, ablation=ablation,
                                           positional=positional)
        for i, u in enumerate(group):
            for k, column in enumerate(columns):
                exact[(u, column)] = float(values[i, k])
    attribution: dict[tuple, float] = {}
    levels: list[str | None] = [None] if any(t.is_output for t in runs.targets) else []
    for level in levels + list(runs.sites):
        if level is None:
            downstream = [i for i, t in enumerate(runs.targets) if t.is_output]
        else:
            downstream = [i for i, t in enumerate(runs.targets) if t.site == level]
            downstream += nodes.get(level, [])
        depth = runs.read_depth(level)
        upstream = {s: g for s, g in nodes.items() if site_depth(s) < depth}
        attribution.update(gradient_edges(runs, level, downstream, upstream, ablation=ablation,
                                          positional=positional, method=method, steps=steps))
    return {"exact": exact, "attribution": {k: v for k, v in attribution.items() if k in exact}}
