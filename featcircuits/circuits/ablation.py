"""Exact ablation effects: ablate nodes (many per forward pass) and read what changes.

``ablation_effects`` ablates each of a set of nodes at one site alone — ``x −= (c_u −
source_u) f_u`` for a feature (``patch_site``, the error kept), the error term replaced by its
source for an error node (``patch_error``) — and reads every requested downstream node and
target in the same pass. With ``freeze`` every later dictionary site is held at its clean
value after being read, so the readings are *direct* effects (edge weights); without, total
effects (node effects). Node values are defined in ``featcircuits.engine.runs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from featcircuits.circuits.nodes import Node, node_order, site_depth
from featcircuits.engine.cache import select_features
from featcircuits.engine.circuit_trace import NodeRead, SiteOps, repeat_rows
from featcircuits.engine.runs import ERROR, CircuitRuns, direct_sites

__all__ = ["ablation_effects", "exact_node_effects", "verify_edges"]


def ablation_effects(runs: CircuitRuns, site: str, nodes: Sequence[Node],
                     downstream: Mapping[str, Sequence[Node]], *, ablation: str,
                     positional: bool, freeze: bool = True, progress: bool | None = None
                     ) -> tuple[torch.Tensor, list]:
    """Ablate each of ``nodes`` (all at ``site``) alone and read the downstream nodes.

    Many nodes are ablated per forward pass (copies of the data stacked along the batch).
    With ``freeze`` every dictionary site after ``site`` is held at its clean value after
    being read, so readings are direct effects.

    Returns:
        ``effects [len(nodes), n_columns]``: ``value(clean) − value(ablated)`` averaged over
        prompts, and the columns: the downstream nodes (in site order) followed by the ids
        of the targets deeper than ``site``.
    """
    source_features, source_errors = runs.sources(ablation)
    depth = site_depth(site)

    def reached(target_depth: float) -> bool:
        # with later sites frozen, only sites with no whole-state site in between are reached
        return not freeze or site in direct_sites(runs.sites, target_depth, runs.dictionaries)

    live_targets = [i for i, t in enumerate(runs.targets)
                    if (t.is_output or site_depth(t.site) > depth)
                    and reached(runs.read_depth(t.site))]
    later = [s for s in runs.sites
             if site_depth(s) > depth and site_depth(s) < runs.max_target_depth]
    plans = {}
    columns: list = []
    for j in later:
        if not reached(runs.read_depth(j)):
            continue
        down = [node for node in downstream.get(j, [])]
        if not down:
            continue
        feature_ids = sorted({f for _, f, _ in down if f != ERROR})
        plans[j] = (down, torch.tensor(feature_ids, dtype=torch.long, device=runs.device),
                    any(f == ERROR for _, f, _ in down))
        columns.extend(down)
    columns.extend(runs.targets[i].node_id for i in live_targets)
    baseline = _baseline(runs, plans, live_targets, positional)
    # copies only differ from ``site`` on: run the layers before it once and tile there
    tile = runs.copies_tile(site)
    need_outputs = any(runs.targets[i].is_output for i in live_targets)
    per_chunk = runs.chunk_copies()
    chunks = range(0, len(nodes), per_chunk)
    show = runs.progress if progress is None else progress
    out = []
    for start in tqdm(chunks, desc=f"ablate {site}", leave=False,
                      disable=not show or len(chunks) < 3):
        chunk = nodes[start:start + per_chunk]
        copies = len(chunk)
        ops = {site: _ablation_ops(runs, site, chunk, source_features, source_errors[site])}
        for j in later:
            op = SiteOps()
            if j in plans:
                _, ids, has_error = plans[j]
                op.readout = NodeRead(feature_ids=ids if len(ids) else None, error=has_error,
                                     error_vector=repeat_rows(runs.gradients[j], copies),
                                     weights=None if positional
                                     else repeat_rows(runs.node_weights, copies))
            if freeze:
                op.freeze = repeat_rows(runs.activations[j], copies)
            if op.readout is not None or op.freeze is not None:
                ops[j] = op
        with torch.no_grad():
            result = runs.trace(ops, copies, tile_at=tile, outputs=need_outputs)
        out.append(_collect(runs, result, plans, live_targets, copies, positional))
    if not out:
        return torch.zeros(0, len(columns), device=runs.device), columns
    ablated = torch.cat(out)
    return baseline[None, :] - ablated, columns

def _ablation_ops(runs: CircuitRuns, site: str, chunk: Sequence[Node],
                  source_features: Mapping[str, torch.Tensor], source_errors: torch.Tensor
                  ) -> SiteOps:
    """The ``SiteOps`` ablating each node of ``chunk`` in its own copy; only the chunk's
    features are read from ``source_features`` (``{site: [n, T, F]}``, encoded when read)."""
    n, width = runs.n, runs.width
    copies = len(chunk)
    tm = runs.token_mask
    position_mask = torch.zeros(copies, n, width, device=tm.device)
    for i, (_, _, position) in enumerate(chunk):
        if position is None:
            position_mask[i] = tm
        else:
            position_mask[i, :, position] = tm[:, position]
    position_mask = position_mask.reshape(copies * n, width)
    used = sorted({f for _, f, _ in chunk if f != ERROR})
    op = SiteOps()
    if used:
        used_ids = torch.tensor(used, dtype=torch.long, device=tm.device)
        column = {f: k for k, f in enumerate(used)}
        feature_mask = torch.zeros(copies, len(used), device=tm.device)
        for i, (_, f, _) in enumerate(chunk):
            if f != ERROR:
                feature_mask[i, column[f]] = 1.0
        sources = select_features(source_features, site, feature_ids=used_ids)   # [n, T, k]
        op.patch = {"source_features": repeat_rows(sources, copies),
                    "feature_mask": feature_mask.repeat_interleave(n, 0),
                    "position_mask": position_mask, "feature_ids": used_ids}
    error_rows = torch.tensor([1.0 if f == ERROR else 0.0 for _, f, _ in chunk], device=tm.device)
    if error_rows.any():
        op.patch_err = {"source_error": repeat_rows(source_errors, copies),
                        "error_mask": error_rows.repeat_interleave(n),
                        "position_mask": position_mask}
    return op

def _baseline(runs: CircuitRuns, plans, live_targets, positional) -> torch.Tensor:
    """``[n_columns]`` the clean values of the columns of ``ablation_effects``."""
    tm = runs.token_mask
    weights = runs.node_weights
    columns = []
    for j, (down, ids, _) in plans.items():
        index = {int(f): k for k, f in enumerate(ids.tolist())}
        features = (select_features(runs.features, j, feature_ids=ids)     # [n, T, k]
                    if len(ids) else None)
        error = (runs.errors[j] * runs.gradients[j]).sum(-1)               # [n, T]
        for _, f, position in down:
            value = error if f == ERROR else features[..., index[f]]
            columns.append((value * weights).sum(1).mean(0) if position is None
                           else (value * tm)[:, position].mean(0))
    clean_targets = runs.target_values.mean(0)
    columns.extend(clean_targets[i] for i in live_targets)
    if not columns:
        return torch.zeros(0, device=runs.device)
    return torch.stack([column.float() for column in columns])

def _collect(runs: CircuitRuns, result, plans, live_targets, copies: int, positional: bool
             ) -> torch.Tensor:
    """``[copies, n_columns]`` prompt-averaged readings of one chunk."""
    n = runs.n
    tm = runs.token_mask
    columns = []
    for j, (down, ids, _) in plans.items():
        index = {int(f): k for k, f in enumerate(ids.tolist())}
        features = result.features.get(j)
        errors = result.errors.get(j)
        if positional:
            if features is not None:
                features = (features.reshape(copies, n, *features.shape[1:])
                            * tm[None, ..., None]).mean(1)              # [c, T, k]
            if errors is not None:
                errors = (errors.reshape(copies, n, -1) * tm[None]).mean(1)  # [c, T]
        else:
            if features is not None:
                features = features.reshape(copies, n, -1).mean(1)         # [c, k]
            if errors is not None:
                errors = errors.reshape(copies, n).mean(1)                  # [c]
        for _, f, position in down:
            if f == ERROR:
                columns.append(errors if position is None else errors[:, position])
            else:
                columns.append(features[..., index[f]] if position is None
                               else features[:, position, index[f]])
    if live_targets:
        targets = result.targets.reshape(copies, n, -1).mean(1)
        columns.extend(targets[:, i] for i in live_targets)
    if not columns:
        return torch.zeros(copies, 0, device=runs.device)
    return torch.stack([column.float() for column in columns], dim=1)

def exact_node_effects(runs: CircuitRuns, nodes: Sequence[Node], *, ablation: str,
                       positional: bool) -> dict[Node, float]:
    """``m(clean) − m(node ablated)`` for each node (``m`` = summed targets deeper than the
    node), nodes at one site per batched pass."""
    effects: dict[Node, float] = {}
    by_site: dict[str, list[Node]] = {}
    for node in nodes:
        by_site.setdefault(node[0], []).append(node)
    for site, group in by_site.items():
        values, _ = ablation_effects(runs, site, group, {}, ablation=ablation,
                                     positional=positional, freeze=False)
        for node, row in zip(group, values):
            effects[node] = float(row.sum())
    return effects

def verify_edges(runs: CircuitRuns, edges: Sequence[tuple], *, ablation: str,
                 positional: bool) -> dict[tuple, float]:
    """Exact (ablation) weights of ``edges`` ``[(upstream node, downstream node or target
    id)]``: each distinct upstream node is ablated once, batched per site."""
    by_site: dict[str, dict[Node, list]] = {}
    for u, d in edges:
        by_site.setdefault(u[0], {}).setdefault(u, []).append(d)
    exact: dict[tuple, float] = {}
    for site, groups in by_site.items():
        ups = sorted(groups, key=node_order)
        downstream: dict[str, list[Node]] = {}
        for targets in groups.values():
            for d in targets:
                if not isinstance(d, str) and d not in downstream.get(d[0], []):
                    downstream.setdefault(d[0], []).append(d)
        values, columns = ablation_effects(runs, site, ups, downstream, ablation=ablation,
                                           positional=positional)
        index = {column: k for k, column in enumerate(columns)}
        for i, u in enumerate(ups):
            for d in groups[u]:
                exact[(u, d)] = float(values[i, index[d]])
    return exact
