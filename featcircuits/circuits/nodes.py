"""Circuit nodes: internal keys, graph ids, candidates, and the thresholds edges must pass.

An internal node is ``(site, feature id or ERROR, position or None)``; a target is known by
its graph id (a str). These helpers are shared by exact ablation (``circuits.ablation``),
attribution (``circuits.attribution``), graph building (``circuits.build``) and discovery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx

from featcircuits.engine.runs import ERROR, CircuitRuns
from featcircuits.graph import make_node_id, parse_node_id, target_nodes
from featcircuits.model.sites import Site

Node = tuple[str, int, "int | None"]  # (site, feature id or ERROR, position or None)

__all__ = ["ERROR", "Node", "candidate_nodes", "edge_threshold", "graph_nodes", "keeps_edge",
           "node_id", "node_order", "site_depth", "upstream_sites"]


def site_depth(site: str) -> float:
    """Forward-pass order of a site (``Site.depth``)."""
    return Site.parse(site).depth


def node_id(node: Node) -> str:
    """The graph id of an internal node ``(site, feature or ERROR, position)``."""
    site, index, position = node
    if index == ERROR:
        return make_node_id(site, None, position, kind="error")
    return make_node_id(site, int(index), position,
                        kind="input" if Site.parse(site).kind == "embed" else "feature")


def node_order(node: Node) -> tuple:
    """Sort key: site depth, then feature (error first), then position."""
    site, f, position = node
    return (site_depth(site), f, -1 if position is None else position)


def graph_nodes(graph: nx.DiGraph) -> list[Node]:
    """Internal nodes ``(site, feature or ERROR, position)`` of a graph's feature, error and
    input nodes that belong to a site (targets excluded)."""
    targets = set(target_nodes(graph))
    nodes = []
    for ident in graph.nodes:
        if ident in targets:
            continue
        key = parse_node_id(ident)
        if key.site is None:
            continue
        nodes.append((key.site, ERROR if key.kind == "error" else key.feature, key.position))
    return nodes


def edge_threshold(runs: CircuitRuns, downstream, tau: float, relative: bool) -> float:
    """The ``|weight|`` an edge into ``downstream`` needs: ``tau``, or ``tau`` times the
    downstream node's typical magnitude (``CircuitRuns.node_scale``) when ``relative``."""
    return tau * runs.node_scale(downstream) if relative else tau


def keeps_edge(weight: float, threshold: float) -> bool:
    """An edge is kept when ``|weight| >= threshold``; a zero weight is never an edge."""
    return weight != 0 and abs(weight) >= threshold


def upstream_sites(runs: CircuitRuns) -> list[str]:
    """Dictionary sites that can influence a target (shallower than the deepest target)."""
    deepest = runs.max_target_depth
    return [site for site in runs.sites if site_depth(site) < deepest]


def candidate_nodes(runs: CircuitRuns, site: str, *, ablation: str, positional: bool,
                    candidates: Mapping[str, Sequence[int]] | None = None,
                    errors: bool = True) -> list[Node]:
    """Nodes at ``site`` worth ablating: features whose source differs from their clean value
    somewhere on the data (optionally only those listed in ``candidates[site]``), plus the
    error node (one per position when ``positional``)."""
    active = runs.active_features(site, ablation, positional)
    if candidates is not None:
        allowed = {int(f) for f in candidates.get(site, [])}
        if positional:
            active = [(f, p) for f, p in active if f in allowed]
        else:
            active = [f for f in active if f in allowed]
    if positional:
        nodes = [(site, f, p) for f, p in active]
        if errors:
            nodes += [(site, ERROR, p) for p in runs.error_positions()]
    else:
        nodes = [(site, f, None) for f in active]
        if errors:
            nodes.append((site, ERROR, None))
    return nodes
