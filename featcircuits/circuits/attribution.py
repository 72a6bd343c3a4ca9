"""Attribution: first-order estimates of node effects and edge weights from gradients.

A node's effect ``m(clean) − m(node ablated)`` is estimated by attribution patching,
``(c − s) · ∂m/∂c`` at the clean run, or by integrated gradients (``ig``: the gradient
averaged over points between the clean and the ablated site). An edge ``u → d`` is
estimated by ``(c_u − s_u) · ∂d/∂c_u`` with every dictionary site in between detached, one
backward pass per chunk of downstream nodes (feature levels: one forward pass and batched
vector-Jacobian products, ``engine.pullback``; the output level: copies stacked along the
batch); with ``ig``
the gradient is averaged over points between the upstream site's clean and ablated
activation (the sites in between held clean). For a
transcoder, ``c`` is encoded at its input site and ``∂/∂c`` taken along its decoder
directions at its output site. A cross-layer transcoder node (``engine.carried``) sums
its decoder rows against the gradient at every site it writes (``carried``): ``(c_u − s_u)
· Σ_{L'} g_L' · W_dec[L → L']``, for edges over the written sites before the downstream
node's read site; integrated gradients move every written site along the path
(``circuits.carried_paths``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import einops
import torch
from tqdm.auto import tqdm

from featcircuits.circuits.carried_paths import carried_path_ops
from featcircuits.circuits.nodes import (
    Node,
    candidate_nodes,
    edge_threshold,
    keeps_edge,
    node_order,
    site_depth,
    upstream_sites,
)
from featcircuits.engine.cache import select_features
from featcircuits.engine.circuit_trace import NodeRead, SiteOps, repeat_rows
from featcircuits.engine.memory import FLOAT_BYTES, bytes_per_row, model_shape
from featcircuits.engine.pullback import PullbackUnsupported, level_pullbacks, pullback_possible
from featcircuits.engine.runs import ERROR, CircuitRuns, direct_sites
from featcircuits.errors import ParameterError

IG_METHODS = ("attribution", "ig")

__all__ = ["IG_METHODS", "attribution_edges", "attribution_gradients", "gradient_edges",
           "keep_nodes", "node_attributions", "node_limit", "path_gradients"]


def attribution_gradients(runs: CircuitRuns, site: str, *, ablation: str, method: str,
                          steps: int) -> torch.Tensor:
    """``[n, T, d]`` gradient of the summed targets w.r.t. ``site``: at the clean run
    (``attribution``) or averaged over ``steps`` points between clean and ablated
    (``ig``, midpoint rule; only ``site`` is interpolated)."""
    return path_gradients(runs, site, ablation=ablation, method=method, steps=steps)[site]

def path_gradients(runs: CircuitRuns, site: str, *, ablation: str, method: str,
                   steps: int) -> dict[str, torch.Tensor]:
    """``{written site: [n, T, d]}`` as ``attribution_gradients``, at ``site`` and, for a
    cross-layer transcoder layer, at every later site it writes (``ig``: the path edits
    those sites too, ``circuits.carried_paths``)."""
    _check_method(method)
    later = list(runs.dictionaries[site].later_writes)
    if method == "attribution":
        return {s: runs.gradients[s] for s in [site, *later]}
    clean = runs.activations[site]
    source = runs.source_activation(site, ablation)
    alphas = _alphas(steps, clean.device)
    per_chunk = runs.chunk_copies()
    # copies differ from the site on: the layers before it run once per prompt
    tile = runs.copies_tile(site)
    # float32 even for a bf16 model
    totals = {s: torch.zeros(clean.shape, device=clean.device) for s in [site, *later]}
    for start in range(0, steps, per_chunk):
        chunk = alphas[start:start + per_chunk]
        copies = len(chunk)
        points = clean[None] - chunk[:, None, None, None] * (clean - source)[None]
        delta = torch.zeros(copies * runs.n, runs.width, clean.shape[-1], device=clean.device,
                            requires_grad=True)
        ops = {site: SiteOps(overwrite=points.reshape(copies * runs.n, runs.width, -1),
                             delta=delta)}
        carried_ops, leaves = carried_path_ops(runs, site, ablation, chunk)  # CLT only
        ops.update(carried_ops)
        with torch.enable_grad():
            result = runs.trace(ops, copies, tile_at=tile)
            grads = torch.autograd.grad(result.targets.sum(), [delta, *leaves.values()],
                                        allow_unused=True)
        for s, grad in zip([site, *leaves], grads):
            if grad is not None:
                totals[s] += grad.reshape(copies, runs.n, runs.width, -1).sum(0)
    return {s: total / steps for s, total in totals.items()}

def _check_method(method: str) -> None:
    if method not in IG_METHODS:
        raise ParameterError(f"unknown attribution method {method!r}",
                             hint=f"use one of {IG_METHODS}")

def _alphas(steps: int, device) -> torch.Tensor:
    """``[steps]`` midpoints ``(k + ½) / steps`` of the path from clean (0) to source (1)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParameterError(f"steps must be a positive int, got {steps!r}",
                             hint="integrated gradients need at least one point, e.g. 10")
    return (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps

def _feature_ids(nodes: Sequence[Node]) -> list[int]:
    return sorted({f for _, f, _ in nodes if f != ERROR})

def _all_of(runs: CircuitRuns, site: str, ids: torch.Tensor) -> bool:
    """Whether distinct ``ids`` are every feature of the site (then nothing is gathered)."""
    return len(ids) == runs.dictionaries[site].n_features

def _differences(runs: CircuitRuns, site: str, ids: torch.Tensor, ablation: str
                 ) -> torch.Tensor:
    """``[n, T, k]`` ``c − s`` of distinct sorted features ``ids [k]`` at real tokens (only
    they are encoded)."""
    source_features, _ = runs.sources(ablation)
    ids = None if _all_of(runs, site, ids) else ids
    with torch.no_grad():
        return ((select_features(runs.features, site, feature_ids=ids)
                 - select_features(source_features, site, feature_ids=ids))
                * runs.token_mask[..., None])

def _node_differences(runs: CircuitRuns, site: str, nodes: Sequence[Node], *, ablation: str
                      ) -> torch.Tensor | None:
    """``_differences`` of every feature node (sorted ids) for ``_contributions`` to reuse
    across chunks, or ``None`` where ``[n, T, k]`` would not fit a scan block (then each
    call encodes its blocks)."""
    feature_ids = _feature_ids(nodes)
    if not feature_ids or (FLOAT_BYTES * runs.n * runs.width * len(feature_ids)
                           > runs.scan_budget):
        return None
    ids = torch.tensor(feature_ids, dtype=torch.long, device=runs.device)
    return _differences(runs, site, ids, ablation)

def _contributions(runs: CircuitRuns, site: str, gradient: torch.Tensor, nodes: Sequence[Node],
                   *, ablation: str, positional: bool,
                   differences: torch.Tensor | None = None,
                   carried: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``[copies, len(nodes)]`` estimates ``(c_u − s_u) · (g · f_u)`` for gradients
    ``[copies, n, T, d]`` (summed over positions unless the node is positional; mean over
    prompts). ``differences``: ``_node_differences`` of ``nodes``, computed once by a caller
    that calls this per chunk; else the features are encoded here, block by block.
    ``carried``: ``{later site: gradient [copies, n, T, d]}`` there, for a cross-layer
    transcoder layer: its features' terms ``g_L' · W_dec[L → L']`` are added (the error
    node lives at ``site`` alone)."""
    _, source_errors = runs.sources(ablation)
    tm = runs.token_mask
    dictionary = runs.dictionaries[site]
    feature_ids = _feature_ids(nodes)
    device = gradient.device
    out = torch.zeros(gradient.shape[0], len(nodes), device=device)
    with torch.no_grad():
        # [c, T, k + 1]: every feature node's per-position value, then the error node's
        per_position = torch.empty(gradient.shape[0], runs.width, len(feature_ids) + 1,
                                   device=device)
        if feature_ids:
            ids = torch.tensor(feature_ids, dtype=torch.long, device=device)
            step = runs.feature_chunk(gradient.shape[0] * runs.n)
            for first in range(0, len(feature_ids), step):  # [c, n, T, step] within budget
                block = ids[first:first + step]
                diff = (_differences(runs, site, block, ablation) if differences is None
                        else differences[..., first:first + step])
                directions = (dictionary.directions if _all_of(runs, site, block)
                              else dictionary.directions[block]).to(gradient.dtype)
                along = gradient @ directions.T                           # [c, n, T, k]
                for later, later_gradient in (carried or {}).items():  # CLT: every site
                    written = dictionary.later_writes[later][block].to(gradient.dtype)
                    along = along + later_gradient @ written.T
                per_position[..., first:first + len(block)] = (along * diff[None]).mean(1)
        error_diff = (runs.errors[site] - source_errors[site]) * tm[..., None]
        per_position[..., -1] = (gradient * error_diff[None]).sum(-1).mean(1)   # [c, T]
        # one gather per kind of node (was a Python loop over every node)
        column_of = {f: k for k, f in enumerate(feature_ids)}
        columns = torch.tensor([len(feature_ids) if f == ERROR else column_of[f]
                                for _, f, _ in nodes], dtype=torch.long, device=device)
        whole = [i for i, (_, _, position) in enumerate(nodes) if position is None]
        at = [i for i, (_, _, position) in enumerate(nodes) if position is not None]
        if whole:
            whole_t = torch.tensor(whole, dtype=torch.long, device=device)
            out[:, whole_t] = per_position[..., columns[whole_t]].sum(1)
        if at:
            at_t = torch.tensor(at, dtype=torch.long, device=device)
            positions = torch.tensor([nodes[i][2] for i in at], dtype=torch.long,
                                     device=device)
            out[:, at_t] = per_position[:, positions, columns[at_t]]
    return out

def node_attributions(runs: CircuitRuns, *, ablation: str = "zero", positional: bool = False,
                      method: str = "attribution", steps: int = 10,
                      candidates: Mapping[str, Sequence[int]] | None = None,
                      errors: bool = True) -> dict[Node, float]:
    """Estimated ``m(clean) − m(node ablated)`` of every candidate node (all upstream sites).

    ``attribution``: ``(c − s) · ∂m/∂c`` at the clean run (one backward pass, cached);
    ``ig``: integrated gradients with ``steps`` points per site. Computed once per site and
    setting on ``runs`` (``CircuitRuns.attributions``): another circuit on the same runs
    (another ``tau`` or ``max_nodes``) reuses them. Per site, features plus the
    error node add up to ``(x − x_source) · g``: exactly ``m(clean) − m(site ablated)`` when
    ``m`` is linear in the site, and up to the Riemann error for ``ig`` in general.
    """
    effects: dict[Node, float] = {}
    for site in upstream_sites(runs):
        nodes = candidate_nodes(runs, site, ablation=ablation, positional=positional,
                                candidates=candidates, errors=errors)
        if not nodes:
            continue
        key = (site, ablation, positional, method, steps if method == "ig" else None, errors)
        values = runs.attributions.get(key) if candidates is None else None
        if values is None:
            gradients = path_gradients(runs, site, ablation=ablation, method=method,
                                       steps=steps)
            carried = {later: gradients[later][None]
                       for later in runs.dictionaries[site].later_writes}
            values = _contributions(runs, site, gradients[site][None], nodes,
                                    ablation=ablation, positional=positional,
                                    carried=carried)[0]
            if candidates is None:   # every candidate: reused by the next call on these runs
                runs.attributions[key] = values
        effects.update(zip(nodes, values.tolist()))
    return effects

def gradient_edges(runs: CircuitRuns, level: str | None, downstream: Sequence,
                   upstream: Mapping[str, Sequence[Node]], *, ablation: str, positional: bool,
                   method: str = "attribution", steps: int = 10) -> dict[tuple, float]:
    """Attribution edge weights into ``downstream`` nodes at one level.

    ``level`` is a site (``downstream``: nodes at it and/or indices of feature targets at
    it) or ``None`` (``downstream``: indices of output targets). Copy ``k`` of the data
    backpropagates its own downstream node's value; every dictionary site above the level is
    detached (so gradients are direct), and the gradient at each upstream site gives
    ``(c_u − s_u) · ∂d/∂c_u`` for all its nodes at once.

    ``attribution``: the gradient at the clean run, one backward pass per chunk of
    downstream nodes for every upstream site at once. ``ig``: integrated gradients — per
    upstream site, the site is interpolated between its clean and source (every node
    ablated) activation at ``steps`` midpoints while every other dictionary site between it
    and the level is held at its clean value, and ``∂d/∂c_u`` is averaged over the points
    (one copy per downstream node and point).

    Returns ``{(upstream node, downstream node or target id): weight}``.
    """
    _check_method(method)
    n, width = runs.n, runs.width
    depth = runs.read_depth(level)
    # sites before the last whole-state site (embed/resid) have no direct edge to the level
    reachable = direct_sites(runs.sites, depth, runs.dictionaries)
    up_sites = [s for s in reachable if upstream.get(s)]
    weights: dict[tuple, float] = {}
    if not up_sites or not downstream:
        return weights
    if method == "ig":
        return _ig_edges(runs, level, downstream, upstream, up_sites, reachable,
                         ablation=ablation, positional=positional, steps=steps)
    # CLT sites' later written sites before the level: their gradients count too
    grad_sites = up_sites + sorted({later for s in up_sites
                                    for later in runs.dictionaries[s].later_writes
                                    if later in reachable and later not in up_sites},
                                   key=site_depth)
    chunks = _edge_chunks(runs, level, downstream)
    differences: dict[str, torch.Tensor | None] = {}  # per upstream site, once
    for chunk, site_grads in _chunk_gradients(runs, level, chunks, reachable, grad_sites):
        copies = len(chunk)
        for s in up_sites:
            carried = {later: site_grads[later] for later in runs.dictionaries[s].later_writes
                       if site_grads.get(later) is not None}
            if site_grads[s] is None and not carried:   # no path from the site to the level
                values = torch.zeros(copies, len(upstream[s]), device=runs.device)
            else:
                grad = site_grads[s]
                if grad is None:
                    grad = torch.zeros(copies, n, width, runs.dictionaries[s].d_model,
                                       device=runs.device)
                if s not in differences:
                    differences[s] = _node_differences(runs, s, upstream[s],
                                                       ablation=ablation)
                values = _contributions(runs, s, grad, upstream[s], ablation=ablation,
                                        positional=positional, differences=differences[s],
                                        carried=carried)
            for item, row in zip(chunk, values.tolist()):
                key = _down_key(runs, item, level)
                weights.update(((node, key), value) for node, value in zip(upstream[s], row))
    return weights

def _chunk_gradients(runs: CircuitRuns, level: str | None, chunks: Sequence[Sequence],
                     reachable: Sequence[str], grad_sites: Sequence[str]):
    """Per chunk of downstream items: ``(chunk, {site: [copies, n, T, d] gradient of each
    copy's own value, or None})``, every site of ``reachable`` detached. Feature levels: one
    forward pass and batched vector-Jacobian products (``engine.pullback``); the output
    level, runs with cross-layer transcoders and models ``vmap`` cannot batch: one copy of
    the data per item."""
    n, width = runs.n, runs.width
    if pullback_possible(runs, level, grad_sites):
        try:
            pulled = level_pullbacks(runs, level, reachable, grad_sites, len(chunks),
                                     lambda k: _own_readout(runs, level, chunks[k]))
            first = next(pulled)
        except PullbackUnsupported:
            pass
        else:
            yield chunks[0], first
            yield from zip(chunks[1:], pulled)
            return
    tile = runs.copies_tile(reachable[0])
    rows = max(len(chunk) for chunk in chunks) * n
    # one zero delta per site whose gradient is read, sliced for every pass (the other
    # reachable sites are only detached): gradients w.r.t. the slices
    buffers = {s: torch.zeros(rows, width, runs.dictionaries[s].d_model, device=runs.device,
                              requires_grad=True) for s in grad_sites}
    for chunk in chunks:
        copies = len(chunk)
        with torch.enable_grad():
            deltas = {s: buffer[:copies * n] for s, buffer in buffers.items()}
            ops = {s: SiteOps(delta=deltas.get(s), detach=True) for s in reachable}
            if level is not None:
                ops[level] = SiteOps(readout=_own_readout(runs, level, chunk))
            result = runs.trace(ops, copies, tile_at=tile, outputs=level is None)
            grads = torch.autograd.grad(_own_values(runs, result, level, chunk),
                                        [deltas[s] for s in grad_sites], allow_unused=True)
        yield chunk, {s: None if grad is None else grad.reshape(copies, n, width, -1)
                      for s, grad in zip(grad_sites, grads)}

def _edge_chunks(runs: CircuitRuns, level: str | None, items: Sequence,
                 reads_error=None) -> list[list]:
    """``items`` split into the passes of ``gradient_edges`` (one copy of the data per
    item: a downstream item, or what ``reads_error(item)`` tells reads the error node), as
    many copies per pass as ``max_rows`` and ``max_memory`` allow.

    A copy costs the model's activations (and the full-sequence logits at the output
    level); it never builds ``[T, n_features]`` tensors except when it reads the level's
    error node or the level's dictionary encodes every feature to read one
    (``separable_rows`` false: TopK) — three of the level dictionary's width: features,
    reconstruction, a temporary —, so the copies reading features run many more per pass
    than ``CircuitRuns.chunk_copies`` (which assumes every copy does)."""
    n, width = runs.n, runs.width
    vocab = model_shape(runs.model)["vocab"] if level is None else 0
    d_model = max(d.d_model for d in runs.dictionaries.values())
    per_copy = n * bytes_per_row(width, vocab=vocab, features=(), d_models=[d_model])
    dense = 0 if level is None else n * FLOAT_BYTES * width * 3 * runs.dictionaries[
        level].n_features
    max_copies = max(1, runs.max_rows // n)
    chunks: list[list] = []
    chunk: list = []
    used = 0
    every = level is not None and not runs.dictionaries[level].separable_rows
    for item in items:
        cost = per_copy + (dense if every or (reads_error or _reads_error)(item) else 0)
        if chunk and (len(chunk) >= max_copies or used + cost > runs.max_memory):
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(item)
        used += cost
    return [*chunks, chunk] if chunk else chunks

def _reads_error(item) -> bool:
    """Whether a downstream item is an error node (a feature target is an ``int``)."""
    return not isinstance(item, int) and item[1] == ERROR

def _ig_edges(runs: CircuitRuns, level: str | None, downstream: Sequence,
              upstream: Mapping[str, Sequence[Node]], up_sites: Sequence[str],
              reachable: Sequence[str], *, ablation: str, positional: bool, steps: int
              ) -> dict[tuple, float]:
    """``gradient_edges`` by integrated gradients: copies are (downstream node, point)
    pairs, one upstream site interpolated at a time."""
    n, width = runs.n, runs.width
    alphas = _alphas(steps, runs.device)
    pairs = [(index, k) for index in range(len(downstream)) for k in range(steps)]
    chunks = _edge_chunks(runs, level, pairs, lambda pair: _reads_error(downstream[pair[0]]))
    weights: dict[tuple, float] = {}
    for site in up_sites:
        clean = runs.activations[site].float()
        diff = clean - runs.source_activation(site, ablation).float()
        later = [s for s in reachable if site_depth(s) > site_depth(site)]
        tile = runs.copies_tile(site)
        # [len(downstream), len(upstream nodes)]: contributions summed over the points
        total = torch.zeros(len(downstream), len(upstream[site]), dtype=torch.float64,
                            device="cpu")  # host-side sums, read once per site
        differences = _node_differences(runs, site, upstream[site], ablation=ablation)
        for chunk in chunks:
            copies = len(chunk)
            items = [downstream[index] for index, _ in chunk]
            points = clean[None] - alphas[[k for _, k in chunk]][:, None, None, None] * diff[None]
            delta = torch.zeros(copies * n, width, clean.shape[-1], device=runs.device,
                                requires_grad=True)
            ops = {site: SiteOps(overwrite=einops.rearrange(points, "k n t d -> (k n) t d"),
                                 delta=delta, detach=True)}
            # the other sites between the interpolated one and the level stay clean
            ops.update({s: SiteOps(overwrite=repeat_rows(runs.activations[s], copies))
                        for s in later})
            # a CLT site's path also edits the held sites it writes; gradients there count
            carried_ops, leaves = carried_path_ops(runs, site, ablation, alphas[
                [k for _, k in chunk]], held=True)
            leaves = {s: leaf for s, leaf in leaves.items() if s in later}
            ops.update({s: op for s, op in carried_ops.items() if s in leaves})
            if level is not None:
                ops[level] = SiteOps(readout=_own_readout(runs, level, items))
            with torch.enable_grad():
                result = runs.trace(ops, copies, tile_at=tile, outputs=level is None)
                grad, *later_grads = torch.autograd.grad(
                    _own_values(runs, result, level, items), [delta, *leaves.values()],
                    allow_unused=True)
            carried = {s: g.reshape(copies, n, width, -1)
                       for s, g in zip(leaves, later_grads) if g is not None}
            if grad is None and not carried:
                continue
            if grad is None:
                grad = torch.zeros_like(delta)
            values = _contributions(runs, site, grad.reshape(copies, n, width, -1),
                                    upstream[site], ablation=ablation, positional=positional,
                                    differences=differences, carried=carried)
            total.index_add_(0, torch.tensor([index for index, _ in chunk], device="cpu"),
                             values.detach().cpu().double())
        for item, row in zip(downstream, (total / steps).tolist()):
            key = _down_key(runs, item, level)
            weights.update(((node, key), value) for node, value in zip(upstream[site], row))
    return weights

def _own_readout(runs: CircuitRuns, level: str, chunk: Sequence) -> NodeRead:
    """The readout at ``level`` in which copy ``k`` reads ``chunk[k]``'s value (a node at
    the level or the index of a feature target there)."""
    n, width, tm = runs.n, runs.width, runs.token_mask
    copies = len(chunk)
    own_feature = torch.zeros(copies, dtype=torch.long, device=runs.device)
    own_weights = torch.zeros(copies, n, width, device=runs.device)
    for k, item in enumerate(chunk):
        if isinstance(item, int):          # a feature target at this site
            target = runs.targets[item]
            own_feature[k] = target.feature
            own_weights[k] = target.weights
        else:
            _, f, position = item
            own_feature[k] = f
            if position is None:
                own_weights[k] = runs.node_weights
            else:
                own_weights[k, :, position] = tm[:, position]
    return NodeRead(own_feature=own_feature.repeat_interleave(n),
                    own_weights=own_weights.reshape(copies * n, width),
                    error_vector=repeat_rows(runs.gradients[level], copies))

def _own_values(runs: CircuitRuns, result, level: str | None, chunk: Sequence) -> torch.Tensor:
    """The summed values copy ``k`` backpropagates: its node at ``level``, or its output
    target when ``level`` is ``None``."""
    if level is None:
        picks = torch.tensor(chunk, device=result.targets.device).repeat_interleave(runs.n)
        return result.targets.gather(1, picks[:, None]).sum()
    return result.own[level].sum()

def _down_key(runs: CircuitRuns, item, level):
    """Node of a downstream item: targets become their node id (a str)."""
    if isinstance(item, int):
        return runs.targets[item].node_id
    return item

def node_limit(runs: CircuitRuns, node_tau: float, relative: bool) -> float:
    """The ``|effect|`` a node needs: ``node_tau``, or ``node_tau`` times the summed targets'
    typical magnitude when ``relative``."""
    if not relative:
        return node_tau
    return node_tau * sum(runs.node_scale(t.node_id) for t in runs.targets)

def keep_nodes(effects: Mapping[Node, float], node_tau: float, max_nodes: int | None
                ) -> dict[str, list[Node]]:
    """Nodes with ``|effect| >= node_tau``, at most ``max_nodes`` per site (largest
    ``|effect|`` first), grouped by site."""
    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int)
                                  or max_nodes < 1):
        raise ParameterError(f"max_nodes must be a positive int or None, got {max_nodes!r}")
    kept: dict[str, list[Node]] = {}
    for node, value in sorted(effects.items(), key=lambda item: -abs(item[1])):
        if abs(value) < node_tau:
            break
        group = kept.setdefault(node[0], [])
        if max_nodes is None or len(group) < max_nodes:
            group.append(node)
    return kept

def attribution_edges(runs: CircuitRuns, kept: Mapping[str, list[Node]], tau: float, *,
                       ablation: str, positional: bool, relative_tau: bool = False,
                       method: str = "attribution", steps: int = 10
                       ) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """Edges with ``|weight| >= tau`` among ``kept`` nodes, levels from the top down; also
    every weight computed into a target (whatever its size: ``warn_if_cut_off`` reads the
    strongest; the weights between nodes below ``tau`` are not kept, ~10⁶ of them at
    Pythia scale). ``method``/``steps``: as in ``gradient_edges``."""
    in_graph: dict[str, set[Node]] = {}
    edges: dict[tuple, float] = {}
    into_targets: dict[tuple, float] = {}
    levels: list[str | None] = []
    if any(t.is_output for t in runs.targets):
        levels.append(None)
    levels += list(reversed(runs.sites))
    for level in tqdm(levels, desc="attribution edges", leave=False,
                      disable=not runs.progress or len(levels) < 3):
        if level is None:
            downstream = [i for i, t in enumerate(runs.targets) if t.is_output]
        else:
            downstream = [i for i, t in enumerate(runs.targets) if t.site == level]
            downstream += sorted(in_graph.get(level, set()), key=node_order)
        depth = runs.read_depth(level)
        upstream = {s: nodes for s, nodes in kept.items() if site_depth(s) < depth}
        weights = gradient_edges(runs, level, downstream, upstream, ablation=ablation,
                                 positional=positional, method=method, steps=steps)
        for (u, d), w in weights.items():
            if isinstance(d, str):
                into_targets[(u, d)] = w
            if keeps_edge(w, edge_threshold(runs, d, tau, relative_tau)):
                edges[(u, d)] = w
                in_graph.setdefault(u[0], set()).add(u)
    return edges, into_targets
