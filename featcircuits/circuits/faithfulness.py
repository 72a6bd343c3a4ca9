"""How well a circuit explains its target: faithfulness and completeness, for node sets and
for edge sets, and faithfulness-vs-size curves.

With ``m`` the summed targets averaged over prompts, ``M`` the whole model and ``∅`` the
model with every node (every feature and error term at every dictionary site) ablated::

    faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))
    complement(C)   = (m(M∖C) − m(∅)) / (m(M) − m(∅));   completeness = 1 − complement

``complement`` near 0 (completeness near 1) means ablating the circuit removes the behaviour.
Nodes outside the evaluated set are ablated the way the circuit was found: ``faithfulness``
and ``faithfulness_curve`` default to the ablation the graph records (``graph.graph
["ablation"]``); pass ``ablation=`` to evaluate with another one.

**Node sets.** ``m(C)``: one forward pass in which, at every dictionary site, the features
and error terms not in ``C`` are ablated (``patch_site`` / ``patch_error``, relative to the
live activation); ``m(M∖C)``: only ``C``'s nodes are ablated.

**Edge sets** (exact path patching, no linear approximation). Every node keeps its own
value, but a node ``d`` receives from an upstream node ``u`` whose edge ``u → d`` is absent
the value ``d`` would have had with ``u`` ablated, while other nodes still see ``u``
intact. Computed level by level in site order: a site's node values are *assembled*
(features and error of each node taken from a forward pass of its own, nodes outside the
set take their ablation source), and node ``d`` at site ``j`` is read from a copy of the
run in which every earlier site is overwritten with the assembled values, except that the
upstream nodes whose edge into ``d`` is absent are set to their source there. One forward
pass per site, with one copy per node that misses an incoming edge (copies batched).
``m(C)`` keeps ``C``'s nodes and edges; ``m(M∖C)`` keeps every node and every edge except
``C``'s edges. With every edge between kept nodes present, the edge evaluation equals the
node evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import pandas as pd
import torch
from tqdm.auto import tqdm

from featcircuits.circuits.discovery import circuit_runs
from featcircuits.circuits.nodes import Node, graph_nodes, node_id, site_depth
from featcircuits.circuits.path_patching import (
    dense_mask,
    evaluate_edge_specs_sparse,
    mask_any,
    sparse_possible,
)
from featcircuits.engine.cache import select_features
from featcircuits.engine.carried import earlier_writes, writers_of
from featcircuits.engine.circuit_trace import NodeRead, SiteOps, repeat_rows
from featcircuits.engine.runs import ERROR, CircuitRuns, direct_sites
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import GraphError, ParameterError
from featcircuits.graph import check_graph, parse_node_id, reaching, target_nodes, top_k_edges
from featcircuits.patching.search import size_grid

Masks = dict[str, torch.Tensor]  # {site: [T, F + 1] bool}, last column = error node


def _empty_masks(runs: CircuitRuns, value: bool = False, sites=None, device=None) -> Masks:
    """Masks on ``device`` (default: the runs' device)."""
    device = runs.device if device is None else device
    return {site: torch.full((runs.width, runs.dictionaries[site].n_features + 1), value,
                             device=device)
            for site in runs.sites if sites is None or site in sites}


def node_masks(runs: CircuitRuns, nodes: Iterable[Node], *, sparse: bool = False) -> Masks:
    """``{site: [T, F+1]}`` True at the nodes' (position, feature) cells; a node without a
    position covers every position; feature ``ERROR`` is the last column. ``sparse``: only
    sites that hold one of the nodes get a mask. Built on the CPU (cell by cell), returned
    on the runs' device."""
    nodes = list(nodes)
    masks = _empty_masks(runs, sites={site for site, _, _ in nodes} if sparse else None,
                         device="cpu")
    for site, f, position in nodes:
        if site not in masks:
            raise GraphError(f"node at site {site!r} has no dictionary",
                             hint=f"the circuit's sites must be among {runs.sites}")
        column = -1 if f == ERROR else int(f)
        if position is None:
            masks[site][:, column] = True
        elif position < runs.width:
            masks[site][position, column] = True
    return {site: mask.to(runs.device) for site, mask in masks.items()}


# --------------------------------------------------------------------------- nodes
def evaluate_node_sets(runs: CircuitRuns, kept: Sequence[Masks], *,
                       ablation: str = "zero") -> torch.Tensor:
    """``[len(kept)]`` metric with every node not in each set ablated (one forward pass per
    chunk of sets, sets stacked along the batch). A cross-layer transcoder's ablated
    features edit every site they write, and its error patched at ``mlp_out.L'`` is the
    pass's live one (``engine.carried``)."""
    n = runs.n
    source_features, source_errors = runs.sources(ablation)
    tm = runs.token_mask
    values = []
    per_chunk = runs.chunk_copies(every_site=True)
    for start in range(0, len(kept), per_chunk):
        chunk = kept[start:start + per_chunk]
        copies = len(chunk)
        ops = {}
        for site in runs.sites:
            stacked = torch.stack([masks[site].to(tm.device) for masks in chunk])  # [c, T, F+1]
            ablate = ~stacked
            ablate_features = ablate[..., :-1]
            uniform = bool((ablate_features == ablate_features[:, :1]).all())
            if uniform:
                feature_mask = ablate_features[:, 0].float().repeat_interleave(n, 0)
            else:
                feature_mask = ablate_features.float().repeat_interleave(n, 0)
            error_positions = ablate[..., -1].float().repeat_interleave(n, 0) * repeat_rows(
                tm, copies)
            ops[site] = SiteOps(
                patch={"source_features": repeat_rows(source_features[site], copies),
                       "feature_mask": feature_mask, "position_mask": repeat_rows(tm, copies)},
                patch_err={"source_error": repeat_rows(source_errors[site], copies),
                           "error_mask": torch.ones(copies * n, device=tm.device),
                           "position_mask": error_positions})
        with torch.no_grad():
            result = runs.trace(ops, copies)
        values.append(result.targets.sum(-1).reshape(copies, n).mean(1))
    return torch.cat(values) if values else torch.zeros(0, device=tm.device)


# --------------------------------------------------------------------------- edges
@dataclass
class EdgeSpec:
    """A set of nodes and edges to evaluate.

    ``kept``: nodes present (``{site: [T, F+1]}``). ``ablated_into``: for a downstream node
    (``Node``) or target (its index in ``runs.targets``), the upstream cells whose edge into
    it is absent (same mask layout, dense or sparse; only the sites with a direct edge into
    it are read).
    """

    kept: Masks
    ablated_into: dict = field(default_factory=dict)


def evaluate_edge_specs(runs: CircuitRuns, specs: Sequence[EdgeSpec], *,
                        ablation: str = "zero") -> torch.Tensor:
    """``[len(specs)]`` metric of each edge set (see the module docstring). A cross-layer
    transcoder site is assembled with the earlier layers' assembled writes, and an absent
    edge from a CLT feature sets it to its source at every site it writes."""
    source_features, source_errors = runs.sources(ablation)
    deepest = runs.max_target_depth
    sites = [s for s in runs.sites if site_depth(s) < deepest]
    target_sites = {t.site for t in runs.targets if not t.is_output}
    levels = sorted(set(sites) | target_sites, key=site_depth)
    if any(t.is_output for t in runs.targets):
        levels.append(None)
    if sparse_possible(runs):
        return evaluate_edge_specs_sparse(
            runs, specs, ablation=ablation, levels=levels, sites=sites, level_of=_level_of,
            progress=lambda items: tqdm(items, desc="edge evaluation", leave=False,
                                        disable=not runs.progress or len(items) < 3)
        ).sum(-1)
    assembled_f = [{} for _ in specs]
    assembled_e = [{} for _ in specs]
    target_values = torch.zeros(len(specs), len(runs.targets), device=runs.device)
    for level in tqdm(levels, desc="edge evaluation", leave=False,
                      disable=not runs.progress or len(levels) < 3):
        depth = runs.read_depth(level)
        # sites before the last whole-state site cannot reach the level directly: the copies
        # share everything up to it (and run it once, tiled)
        earlier = direct_sites(sites, depth, runs.dictionaries)
        copies: list[tuple[int, object]] = []  # (spec index, None = base | node | target idx)
        for index, spec in enumerate(specs):
            copies.append((index, None))
            for key, masks in spec.ablated_into.items():
                if _level_of(runs, key) != level:
                    continue
                if any(mask_any(masks[s]) for s in earlier if s in masks):
                    copies.append((index, key))
        readings = _run_copies(runs, copies, specs, earlier, level if level in sites else None,
                               assembled_f, assembled_e, source_features, source_errors,
                               outputs=level is None)
        own = {(index, key): reading for (index, key), reading in zip(copies, readings)}
        # the level's source features, encoded once per level (not per spec)
        level_source = (source_features[level] if level is not None and level in sites
                        else None)
        for index, spec in enumerate(specs):
            base = own[(index, None)]
            if level is not None and level in sites:
                kept = spec.kept[level].to(runs.device)
                features = torch.where(kept[None, :, :-1], base["features"], level_source)
                errors = torch.where(kept[None, :, -1:], base["errors"], source_errors[level])
                for key, reading in own.items():
                    if key[0] != index or key[1] is None or isinstance(key[1], int):
                        continue
                    _, f, position = key[1]
                    where = slice(None) if position is None else slice(position, position + 1)
                    if not kept[where, f].all():
                        continue
                    if f == ERROR:
                        errors[:, where] = reading["errors"][:, where]
                    else:
                        features[:, where, f] = reading["features"][:, where, f]
                assembled_f[index][level] = features
                assembled_e[index][level] = errors
            for t, target in enumerate(runs.targets):
                if _level_of(runs, t) != level:
                    continue
                reading = own.get((index, t), base)
                target_values[index, t] = reading["targets"][:, t].mean()
    return target_values.sum(-1)


def _carried_ablation(runs: CircuitRuns, site: str, masks, assembled, source_features):
    """``[n, T, d]`` (or 0): what the ablated cells of earlier cross-layer transcoder layers
    (``masks``: ``{site: [T, F+1]}``) change at ``site``, which their features also write:
    ``(source − assembled) @ W_dec[L → site]`` along those cells."""
    total = 0.0
    for writer in writers_of(runs.dictionaries, site):
        ablate = dense_mask(masks.get(writer))
        if ablate is None or not ablate[:, :-1].any():
            continue
        ablate = ablate.to(runs.device)
        columns = torch.nonzero(ablate[:, :-1].any(0)).flatten()
        change = (source_features[writer][..., columns] - assembled[writer][..., columns])
        change = change * ablate[None, :, columns]
        total = total + change @ runs.dictionaries[writer].later_writes[site][columns]
    return total


def _level_of(runs: CircuitRuns, key) -> str | None:
    if isinstance(key, int):
        return runs.targets[key].site
    return key[0]


def _run_copies(runs, copies, specs, earlier, read_site, assembled_f, assembled_e,
                source_features, source_errors, outputs: bool = True) -> list[dict]:
    """Forward passes for ``copies``; each returns the target values and (when ``read_site``
    is given) the features and errors there, ``[n, ...]`` per copy."""
    n = runs.n
    readings: list[dict] = []
    per_chunk = runs.chunk_copies(every_site=True)
    base: dict[tuple[int, str], torch.Tensor] = {}  # assembled activation per (spec, site)
    for start in range(0, len(copies), per_chunk):
        chunk = copies[start:start + per_chunk]
        ops = {}
        for site in earlier:
            dictionary = runs.dictionaries[site]
            written = []
            for index, key in chunk:
                features = assembled_f[index][site]
                errors = assembled_e[index][site]
                if (index, site) not in base:
                    base[(index, site)] = dictionary.decode(features) + errors
                    # a CLT site: the earlier layers' assembled writes there
                    writes = earlier_writes(runs.dictionaries, assembled_f[index], site)
                    if writes is not None:
                        base[(index, site)] = base[(index, site)] + writes
                activation = base[(index, site)]
                masks = specs[index].ablated_into.get(key) if key is not None else None
                ablate = None if masks is None else dense_mask(masks.get(site))
                ablate = None if ablate is None else ablate.to(runs.device)
                if ablate is not None and ablate.any():
                    # only the ablated cells change: add (source − assembled) along them
                    columns = torch.nonzero(ablate[:, :-1].any(0)).flatten()
                    if len(columns):
                        change = (select_features(source_features, site, feature_ids=columns)
                                  - features[..., columns])
                        change = change * ablate[None, :, columns]
                        activation = activation + change @ dictionary.directions[columns]
                    if ablate[:, -1].any():
                        activation = activation + (source_errors[site] - errors) * ablate[
                            None, :, -1:]
                if masks is not None:  # absent edges from CLT features writing here
                    activation = activation + _carried_ablation(
                        runs, site, masks, assembled_f[index], source_features)
                written.append(activation)
            ops[site] = SiteOps(overwrite=torch.cat(written))
        if read_site is not None:
            # a CLT site's error subtracts the earlier layers' assembled (held) writes
            held = [earlier_writes(runs.dictionaries, assembled_f[index], read_site)
                    for index, _ in chunk]
            ops[read_site] = SiteOps(readout=NodeRead(full=True),
                                     earlier=None if held[0] is None else torch.cat(held))
        with torch.no_grad():
            result = runs.trace(ops, len(chunk),
                                tile_at=runs.copies_tile(earlier[0] if earlier else None),
                                outputs=outputs)
        for k in range(len(chunk)):
            rows = slice(k * n, (k + 1) * n)
            reading = {"targets": result.targets[rows]}
            if read_site is not None:
                reading["features"] = result.full_features[read_site][rows]
                reading["errors"] = result.full_errors[read_site][rows]
            readings.append(reading)
    return readings


def edge_spec(runs: CircuitRuns, graph: nx.DiGraph, *, complement: bool = False) -> EdgeSpec:
    """The ``EdgeSpec`` of a circuit graph; with ``complement``, every node and every edge
    except the circuit's edges."""
    nodes = graph_nodes(graph)
    key_of = {ident: _node_key(runs, ident) for ident in graph.nodes}
    kept = _empty_masks(runs, True) if complement else node_masks(runs, nodes)
    spec = EdgeSpec(kept)
    for ident, key in key_of.items():
        if key is None:
            continue
        level = _level_of(runs, key)
        depth = runs.read_depth(level)
        present = [key_of[p] for p in graph.predecessors(ident)]
        present = [u for u in present if u is not None and not isinstance(u, int)]
        if complement:
            cells = present
        else:
            cells = [u for u in nodes if u not in present]
        # only the sites with a direct edge into the node (its level's direct sites)
        direct = set(direct_sites(runs.sites, depth, runs.dictionaries))
        cells = [u for u in cells if u[0] in direct]
        if cells:   # sparse: one [T, F + 1] mask per node and site, almost all False
            spec.ablated_into[key] = {site: mask.to_sparse() for site, mask in
                                      node_masks(runs, cells, sparse=True).items()}
    return spec


def _node_key(runs: CircuitRuns, ident: str):
    """Internal key of a graph node: target index, ``Node``, or None (unknown output)."""
    for index, target in enumerate(runs.targets):
        if target.node_id == ident:
            return index
    parsed = parse_node_id(ident)
    if parsed.site is None:
        return None
    return (parsed.site, ERROR if parsed.kind == "error" else parsed.feature, parsed.position)


# ---------------------------------------------------------------------- public API
def _check_graph_targets(runs: CircuitRuns, graph: nx.DiGraph) -> None:
    check_graph(graph)
    listed = target_nodes(graph)
    ours = [t.node_id for t in runs.targets]
    if listed and sorted(listed) != sorted(ours):
        raise GraphError(f"the circuit explains {listed} but the runs' targets are {ours}",
                         hint="evaluate with the targets the circuit was built for")


def graph_ablation(graph: nx.DiGraph, ablation: str | None = None) -> str:
    """``ablation``, or (``None``) the ablation ``graph`` was found with
    (``graph.graph["ablation"]``); a graph that records none needs ``ablation``."""
    if ablation is not None:
        return ablation
    recorded = graph.graph.get("ablation")
    if not recorded:
        raise GraphError("the graph records no ablation (graph.graph['ablation'])",
                         hint="pass ablation='zero' (or mean, resample, ...) to evaluate it")
    return str(recorded)


def _graph_runs(model, graph: nx.DiGraph, dictionaries, inputs, *, targets,
                settings: RunSettings | None):
    """Cached runs for evaluating ``graph`` (its targets checked against the runs'), the
    full model's metric ``m(M)`` and the all-ablated masks."""
    runs = circuit_runs(model, dictionaries, inputs, targets=targets, settings=settings)
    _check_graph_targets(runs, graph)
    return runs, runs.metric_value, _empty_masks(runs)


def faithfulness(model, graph: nx.DiGraph, dictionaries=None, inputs=None, *, targets=None,
                 ablation: str | None = None, edges: bool = False,
                 settings: RunSettings | None = None) -> dict[str, float]:
    """Faithfulness and completeness of ``graph`` (see the module docstring).

    Args:
        model: nnsight model — or a ``CircuitRuns`` (then omit dictionaries, inputs,
            targets and settings).
        ablation: how nodes outside the evaluated set are ablated; default: the ablation
            the graph was found with (``graph.graph["ablation"]``).
        edges: evaluate the graph's edge set (path patching) instead of its node set.
        settings: ``RunSettings`` (memory budget, rows per pass, progress).

    Returns:
        ``faithfulness, complement, completeness, m_circuit, m_complement, m_empty, m_full,
        n_nodes, n_edges``.
    """
    ablation = graph_ablation(graph, ablation)
    runs, m_full, empty = _graph_runs(model, graph, dictionaries, inputs, targets=targets,
                                      settings=settings)
    nodes = graph_nodes(graph)
    if edges:
        specs = [edge_spec(runs, graph), edge_spec(runs, graph, complement=True),
                 EdgeSpec(empty)]
        m_circuit, m_complement, m_empty = evaluate_edge_specs(runs, specs,
                                                               ablation=ablation).tolist()
    else:
        circuit = node_masks(runs, nodes)
        complement = {site: ~mask for site, mask in circuit.items()}
        m_circuit, m_complement, m_empty = evaluate_node_sets(
            runs, [circuit, complement, empty], ablation=ablation).tolist()
    scale = m_full - m_empty
    if abs(scale) < 1e-12:
        raise ParameterError("m(M) equals m(∅): ablating everything does not change the target",
                             hint="choose another ablation or target")
    complement_score = (m_complement - m_empty) / scale
    return {"faithfulness": (m_circuit - m_empty) / scale, "complement": complement_score,
            "completeness": 1.0 - complement_score, "m_circuit": m_circuit,
            "m_complement": m_complement, "m_empty": m_empty, "m_full": m_full,
            "n_nodes": len(nodes), "n_edges": graph.number_of_edges()}


def faithfulness_curve(model, graph: nx.DiGraph, dictionaries=None, inputs=None, *,
                       targets=None, by: str = "nodes", sizes: Sequence[int] | None = None,
                       ablation: str | None = None,
                       settings: RunSettings | None = None) -> pd.DataFrame:
    """Faithfulness of the top-``k`` nodes (by ``|effect|``) or edges (by ``|weight|``) of
    ``graph`` for each ``k`` in ``sizes`` (default: 0 and a log grid up to the graph's size).
    Arguments as for ``faithfulness`` (``ablation`` defaults to the graph's).

    Returns:
        one row per k: ``k, n_nodes, n_edges, m, faithfulness`` (edge sub-graphs keep the
        nodes that still reach a target).
    """
    if by not in ("nodes", "edges"):
        raise ParameterError(f"by must be 'nodes' or 'edges', got {by!r}")
    ablation = graph_ablation(graph, ablation)
    runs, m_full, empty = _graph_runs(model, graph, dictionaries, inputs, targets=targets,
                                      settings=settings)
    m_empty = float(evaluate_node_sets(runs, [empty], ablation=ablation)[0])
    if by == "nodes":
        nodes = graph_nodes(graph)
        effect = {n: abs(graph.nodes[node_id(n)].get("effect") or 0.0) for n in nodes}
        ranked = sorted(nodes, key=lambda n: -effect[n])
        sizes = _sizes(sizes, len(ranked))
        values = evaluate_node_sets(runs, [node_masks(runs, ranked[:k]) for k in sizes],
                                    ablation=ablation)
        rows = [{"k": k, "n_nodes": k, "n_edges": graph.subgraph(
            [node_id(n) for n in ranked[:k]] + target_nodes(graph)).number_of_edges(),
            "m": float(v)} for k, v in zip(sizes, values)]
    else:
        sizes = _sizes(sizes, graph.number_of_edges())
        subgraphs = [top_k_edges(graph, k) if k else reaching(_no_edges(graph)) for k in sizes]
        values = evaluate_edge_specs(runs, [edge_spec(runs, g) for g in subgraphs],
                                     ablation=ablation)
        rows = [{"k": k, "n_nodes": len(graph_nodes(g)), "n_edges": g.number_of_edges(),
                 "m": float(v)} for k, g, v in zip(sizes, subgraphs, values)]
    frame = pd.DataFrame(rows, columns=["k", "n_nodes", "n_edges", "m"])
    frame["faithfulness"] = (frame["m"] - m_empty) / (m_full - m_empty)
    return frame


def _no_edges(graph: nx.DiGraph) -> nx.DiGraph:
    copy = graph.copy()
    copy.remove_edges_from(list(copy.edges))
    return copy


def _sizes(sizes: Sequence[int] | None, n_max: int) -> list[int]:
    if sizes is None:
        return size_grid(n_max, 12)
    out = sorted({int(k) for k in sizes})
    if any(k < 0 for k in out):
        raise ParameterError(f"sizes must be >= 0, got {out}")
    return [min(k, n_max) for k in out]


def circuit_masks(runs: CircuitRuns, graph: nx.DiGraph) -> Masks:
    """Node masks of a graph's nodes (for ``evaluate_node_sets``)."""
    return node_masks(runs, graph_nodes(graph))


__all__ = ["EdgeSpec", "circuit_masks", "edge_spec", "evaluate_edge_specs",
           "evaluate_node_sets", "faithfulness", "faithfulness_curve", "graph_ablation",
           "node_masks"]
