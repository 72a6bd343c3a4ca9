"""The HTML viewer's pruning slider, precomputed: at which influence share each node and
edge appears.

The page only compares numbers: a node is shown at share ``s`` when its key is below
``s``, an edge when both its keys are below the node share and the edge share. So a slider
step toggles visibility and never lays anything out again. The keys come from
:func:`featcircuits.graph.influence` (circuit-tracer's cumulative influence):

* nodes, most influential first, get the share of the total node influence carried by the
  nodes before them (so ``key < s`` keeps the fewest nodes carrying share ``s``, as
  :func:`featcircuits.prune` does);
* every node is *admitted together with its path to a target*: following each node's most
  influential outgoing edge reaches a target, and every node on that path gets a key no
  larger than the admitted node's. So at every share each shown node has a shown path to a
  target, and the target is never cut off (targets have key -1: always shown);
* edges: node part = the larger key of their two ends; edge part = the share of the total
  edge influence carried by the edges before them, 0 for the path edges above (so they
  show whenever both ends do).

Nodes that reach no target (influence 0) get key 1: only the full graph shows them. A
graph without targets, or with a cycle, ranks nodes by ``|effect|`` and edges by
``|weight|`` instead (no path guarantee is needed without a target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from featcircuits.errors import GraphError
from featcircuits.graph.influence import influence
from featcircuits.graph.schema import target_nodes

__all__ = ["EDGE_STEPS", "NODE_STEPS", "SliderKeys", "slider_keys", "tier"]

#: the node slider moves in steps of 1/NODE_STEPS, the edge slider in steps of 1/EDGE_STEPS
NODE_STEPS = 100
EDGE_STEPS = 200


def tier(key: float, steps: int) -> int:
    """The smallest ``m`` in ``1..steps`` with ``key < m / steps`` (``steps + 1`` when
    ``key >= 1``): an element is shown at slider value ``m' / steps`` exactly when
    ``m <= m'``, so the page hides and shows whole tiers (``m / steps`` is the same double
    as the slider's value string parsed by the browser)."""
    low, high = 1, steps + 1
    while low < high:  # key < m / steps is monotone in m
        middle = (low + high) // 2
        if key < middle / steps:
            high = middle
        else:
            low = middle + 1
    return low


@dataclass(frozen=True)
class SliderKeys:
    """``nodes[n]``: node key (-1 for targets); ``edges[(u, v)]``: (node part, edge part);
    ``by_influence``: True when the keys come from influence on ``targets``."""

    nodes: dict[str, float]
    edges: dict[tuple[str, str], tuple[float, float]]
    by_influence: bool
    targets: tuple[str, ...]


def _cumulative_keys(values: dict, order: list) -> dict:
    """Share of ``sum(values)`` carried by the items before each one in ``order``."""
    total = math.fsum(values[item] for item in order)
    keys, running = {}, 0.0
    for item in order:
        keys[item] = running / total if total > 0 else 1.0
        running += values[item]
    return keys


def _fallback(graph: nx.DiGraph) -> SliderKeys:
    size = {n: abs(a.get("effect") or 0.0) for n, a in graph.nodes(data=True)}
    nodes = _cumulative_keys(size, sorted(graph.nodes, key=lambda n: (-size[n], n)))
    weight = {(u, v): abs(float(w)) for u, v, w in graph.edges(data="weight")}
    edge_keys = _cumulative_keys(weight, sorted(weight, key=lambda e: (-weight[e], e)))
    edges = {(u, v): (max(nodes[u], nodes[v]), edge_keys[(u, v)]) for u, v in graph.edges}
    return SliderKeys(nodes, edges, False, ())


def slider_keys(graph: nx.DiGraph) -> SliderKeys:
    """Keys of every node and edge of ``graph`` (see the module docstring)."""
    targets = target_nodes(graph)
    if not targets:
        return _fallback(graph)
    try:
        found = influence(graph, targets)
    except GraphError:  # a cycle: no influence, but the page still works
        return _fallback(graph)
    target_set = set(targets)
    ranked = found.node_order()
    share = _cumulative_keys(found.nodes, ranked)
    best = {}
    for node in ranked:
        outgoing = [(found.edges[(node, v)], v) for v in graph.successors(node)]
        value, chosen = max(outgoing, key=lambda item: (item[0], item[1]), default=(0.0, None))
        if value > 0:
            best[node] = chosen
    nodes = dict.fromkeys(targets, -1.0)
    for node in ranked:
        if node in nodes or found.nodes[node] <= 0 or node not in best:
            continue
        key, current = share[node], node
        while current not in nodes and current not in target_set:
            nodes[current] = key
            current = best[current]
    for node in graph.nodes:
        nodes.setdefault(node, 1.0)
    path_edges = {(u, v) for u, v in best.items()}
    edge_share = _cumulative_keys(found.edges, found.edge_order())
    edges = {(u, v): (max(nodes[u], nodes[v]), 0.0 if (u, v) in path_edges else edge_share[(u, v)])
             for u, v in graph.edges}
    return SliderKeys(nodes, edges, True, tuple(targets))
