"""Influence of every node and edge on a circuit's targets, and pruning by it.

The convention is circuit-tracer's (Ameisen et al. 2025, "cumulative influence"):

* ``A[v, u] = |w(u → v)| / Σ_u' |w(u' → v)|`` — each node's absolute incoming weights,
  normalised to sum to 1 (a node without incoming weight has a zero row);
* the targets ``T`` (``schema.target_nodes``) share a unit of weight equally, ``t_v = 1/|T|``;
* node influence ``I = t (A + A² + A³ + …) = t A (1 − A)⁻¹``: the weight reaching the
  targets from the node along every path, each path weighted by the product of its
  normalised edges;
* edge influence ``e(u → v) = A[v, u] · (t_v + I_v)``.

Circuits are DAGs, so ``A`` is nilpotent and ``(1 − A)⁻¹`` is solved exactly by one sweep
in reverse topological order (``O(edges)``; a graph with a cycle is refused). Influence is
a flow: the influence of a node's outgoing edges sums to the node's influence, and so does
the influence of its incoming edges (when it has any).

:func:`prune` keeps the nodes carrying ``node_share`` of the total node influence, then the
edges carrying ``edge_share`` of the total edge influence among them, and only what still
reaches a target; the targets are always kept, and a target that would lose every incoming
edge keeps its strongest path (:func:`strongest_path`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import networkx as nx

from featcircuits.errors import GraphError, ParameterError
from featcircuits.graph.schema import check_graph, target_nodes

__all__ = ["Influence", "grow_top_k", "influence", "keep_connected", "prune", "strongest_path"]


@dataclass(frozen=True)
class Influence:
    """Influence on the targets (see the module docstring).

    Attributes:
        nodes: ``{node: I}`` for every node (targets included: their influence through
            other targets, usually 0).
        edges: ``{(u, v): e}`` for every edge.
        targets: the target ids the influence was measured on.
    """

    nodes: dict[str, float]
    edges: dict[tuple[str, str], float]
    targets: tuple[str, ...]

    def node_order(self) -> list[str]:
        """Non-target nodes, most influential first (ties by id)."""
        skip = set(self.targets)
        return sorted((n for n in self.nodes if n not in skip),
                      key=lambda n: (-self.nodes[n], n))

    def edge_order(self) -> list[tuple[str, str]]:
        """Edges, most influential first (ties by ids)."""
        return sorted(self.edges, key=lambda e: (-self.edges[e], e))


def _targets(graph: nx.DiGraph, targets: Iterable[str] | str | None) -> list[str]:
    if targets is None:
        found = target_nodes(graph)
    elif isinstance(targets, str):
        found = [targets]
    else:
        found = list(targets)
    missing = [node for node in found if node not in graph]
    if missing:
        raise GraphError(f"target node {missing[0]!r} is not in the graph",
                         hint="pass ids of nodes in the graph (see graph.nodes)")
    if not found:
        raise GraphError("the graph has no target node (no graph attribute target_nodes and "
                         "no node of kind 'output')",
                         hint="set graph.graph['target_nodes'] or pass targets=")
    return found


def _normalised(graph: nx.DiGraph) -> dict[tuple[str, str], float]:
    """``A[v, u]`` keyed by edge ``(u, v)``."""
    out = {}
    for v in graph.nodes:
        total = math.fsum(abs(float(w)) for _, _, w in graph.in_edges(v, data="weight"))
        for u, _, w in graph.in_edges(v, data="weight"):
            out[(u, v)] = abs(float(w)) / total if total > 0 else 0.0
    return out


def _topological(graph: nx.DiGraph) -> list[str]:
    try:
        return list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible as exc:
        cycle = nx.find_cycle(graph)
        raise GraphError(f"the circuit has a cycle through {cycle[0][0]!r}; influence needs "
                         "a DAG", hint="circuit graphs point from earlier to later sites; "
                         "remove the edge that closes the cycle") from exc


def influence(graph: nx.DiGraph, targets: Iterable[str] | str | None = None) -> Influence:
    """Node and edge influence on ``targets`` (default: ``target_nodes(graph)``).

    ``GraphError`` for a graph with a cycle, without targets or with unknown target ids.
    """
    check_graph(graph)
    found = _targets(graph, targets)
    share = {node: 1.0 / len(found) for node in found}
    a = _normalised(graph)
    node_value: dict[str, float] = {}
    for node in reversed(_topological(graph)):
        node_value[node] = math.fsum(a[(node, v)] * (share.get(v, 0.0) + node_value[v])
                                     for v in graph.successors(node))
    edges = {(u, v): a[(u, v)] * (share.get(v, 0.0) + node_value[v]) for u, v in graph.edges}
    return Influence(node_value, edges, tuple(found))


def strongest_path(graph: nx.DiGraph, target: str,
                   score: Callable[[str, str], float] | None = None
                   ) -> tuple[list[str], float]:
    """The widest path into ``target``: from a node without incoming edges, maximising the
    smallest ``score(u, v)`` of its edges (default: the normalised weight ``A[v, u]``).

    Returns ``(nodes from source to target, bottleneck)``; ``([target], inf)`` when
    ``target`` has no incoming edge. Ties go to the smaller node id.
    """
    if target not in graph:
        raise GraphError(f"target node {target!r} is not in the graph",
                         hint="pass the id of a node in the graph")
    if score is None:
        a = _normalised(graph)

        def score(u: str, v: str) -> float:
            return a[(u, v)]

    upstream = nx.ancestors(graph, target) | {target}
    sub = graph.subgraph(upstream)
    best: dict[str, float] = {}
    parent: dict[str, str | None] = {}
    for node in _topological(sub):
        preds = sorted(sub.predecessors(node))
        if not preds:
            best[node], parent[node] = math.inf, None
            continue
        value, chosen = -math.inf, None
        for u in preds:
            width = min(best[u], float(score(u, node)))
            if width > value:
                value, chosen = width, u
        best[node], parent[node] = value, chosen
    path = [target]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return path[::-1], best[target]


def _cumulative_prefix(values: list[float], share: float) -> int:
    """How many of ``values`` (sorted descending) carry ``share`` of their sum: the
    smallest prefix whose sum reaches it (all of them for share 1)."""
    total = math.fsum(values)
    if total <= 0:
        return 0
    running = 0.0
    for index, value in enumerate(values):
        running += value
        if running >= share * total * (1 - 1e-12):
            return index + 1
    return len(values)


def _check_share(value, name: str) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} must be a number in (0, 1], got {value!r}",
                             hint=f"e.g. {name}=0.8 keeps 80 % of the influence") from exc
    if not 0 < share <= 1:
        raise ParameterError(f"{name} must be in (0, 1], got {value!r}",
                             hint=f"e.g. {name}=0.8 keeps 80 % of the influence")
    return share


def keep_connected(original: nx.DiGraph, pruned: nx.DiGraph, targets: list[str],
                   score: Callable[[str, str], float] | None = None) -> nx.DiGraph:
    """``pruned`` restricted to the nodes that reach a target, plus, for every target that
    lost all its incoming edges, its strongest path in ``original``."""
    keep = set(targets)
    for node in targets:
        keep |= nx.ancestors(pruned, node)
    result = pruned.subgraph(keep).copy()
    for node in targets:
        if original.in_degree(node) and not result.in_degree(node):
            path, _ = strongest_path(original, node, score)
            for u, v in itertools.pairwise(path):
                result.add_node(u, **original.nodes[u])
                result.add_edge(u, v, **original.edges[u, v])
    return result


def prune(graph: nx.DiGraph, node_share: float = 0.8, edge_share: float = 0.98, *,
          targets: Iterable[str] | str | None = None) -> nx.DiGraph:
    """Keep what carries most of the influence on the targets (circuit-tracer's pruning).

    1. Rank the non-target nodes by influence; keep the fewest that carry ``node_share`` of
       the total node influence (plus the targets).
    2. On the graph of kept nodes, recompute the influence and keep the fewest edges that
       carry ``edge_share`` of the total edge influence.
    3. Keep only nodes with a path to a target; a target left without incoming edges keeps
       its strongest path of the original graph (:func:`strongest_path`).

    Every kept node has a path to a target. The result records what was pruned in its graph
    attribute ``pruned`` (``{"node_share", "edge_share", "nodes_before", "edges_before"}``)
    and each kept node's and edge's influence in the original graph as ``influence``.
    ``ParameterError`` for shares outside ``(0, 1]``; ``GraphError`` as :func:`influence`.
    """
    node_share = _check_share(node_share, "node_share")
    edge_share = _check_share(edge_share, "edge_share")
    found = _targets(graph, targets)
    full = influence(graph, found)
    ranked = full.node_order()
    count = _cumulative_prefix([full.nodes[n] for n in ranked], node_share)
    kept_nodes = set(found) | {n for n in ranked[:count] if full.nodes[n] > 0}
    sub = graph.subgraph(kept_nodes).copy()
    inner = influence(sub, found)
    edges = inner.edge_order()
    count = _cumulative_prefix([inner.edges[e] for e in edges], edge_share)
    sub.remove_edges_from(edges[count:])
    result = keep_connected(graph, sub, found)
    for node in result.nodes:
        result.nodes[node]["influence"] = full.nodes[node]
    for u, v in result.edges:
        result.edges[u, v]["influence"] = full.edges[(u, v)]
    before = graph.graph.get("pruned") or {}
    result.graph["pruned"] = {
        "node_share": node_share, "edge_share": edge_share,
        "nodes_before": int(before.get("nodes_before", graph.number_of_nodes())),
        "edges_before": int(before.get("edges_before", graph.number_of_edges())),
    }
    return result


def grow_top_k(graph: nx.DiGraph, k: int, targets: list[str]) -> nx.DiGraph:
    """The ``k`` most influential edges that stay connected to a target: grown from the
    targets backwards, always taking the most influential edge into the kept set."""
    full = influence(graph, targets)
    kept_nodes, kept_edges = set(targets), []
    heap: list[tuple[float, str, str]] = []

    def push(node: str) -> None:
        for u, _ in graph.in_edges(node):
            heapq.heappush(heap, (-full.edges[(u, node)], u, node))

    for node in targets:
        push(node)
    seen = set()
    while heap and len(kept_edges) < k:
        _, u, v = heapq.heappop(heap)
        if (u, v) in seen:
            continue
        seen.add((u, v))
        kept_edges.append((u, v))
        if u not in kept_nodes:
            kept_nodes.add(u)
            push(u)
    chosen = set(kept_edges)
    result = graph.subgraph(kept_nodes).copy()
    result.remove_edges_from([e for e in list(result.edges) if e not in chosen])
    return result
