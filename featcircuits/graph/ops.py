"""Graph operations over circuit graphs (``networkx.DiGraph`` of the schema in
``featcircuits.graph.schema`` / ``docs/graph-format.md``): thresholds, top-k, reaching.

Node ids, the format version and validation live in :mod:`featcircuits.graph.schema`
(``make_node_id``, ``parse_node_id``, ``check_graph`` and ``target_nodes`` are re-exported
here for callers of the old module).

Every function here takes a graph and returns a new graph (the input is never modified).
Which nodes are the circuit's targets is read from the graph attribute ``target_nodes``
(a list of node ids; written by circuit discovery), falling back to the output nodes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import networkx as nx

from featcircuits.errors import GraphError, ParameterError
from featcircuits.graph.schema import target_nodes


# ------------------------------------------------------------------------------ checks
def check_tau(tau, name: str = "tau") -> float:
    """A threshold as a float; ``ParameterError`` for NaN, infinite (a threshold nothing can
    reach is never what was meant: an empty circuit after minutes of work), negative or
    non-numbers."""
    try:
        value = float(tau)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} must be a number, got {tau!r}",
                             hint=f"pass e.g. {name}=0.05") from exc
    if not math.isfinite(value) or value < 0:
        raise ParameterError(f"{name} must be a finite number >= 0, got {tau!r}",
                             hint=f"pass a non-negative threshold, e.g. {name}=0.05")
    return value


# --------------------------------------------------------------------------- functions
def reaching(graph: nx.DiGraph, targets: Iterable[str] | str | None = None) -> nx.DiGraph:
    """The sub-graph of nodes with a directed path to any of ``targets`` (targets included).

    ``targets`` defaults to ``target_nodes(graph)``. Unknown target ids raise ``GraphError``.
    """
    if targets is None:
        targets = target_nodes(graph)
    elif isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    missing = [node for node in targets if node not in graph]
    if missing:
        raise GraphError(f"target node {missing[0]!r} is not in the graph",
                         hint="pass ids of nodes in the graph (see graph.nodes)")
    keep = set(targets)
    for node in targets:
        keep |= nx.ancestors(graph, node)
    return graph.subgraph(keep).copy()


def threshold(graph: nx.DiGraph, tau: float, *, relative: bool | None = None) -> nx.DiGraph:
    """Keep edges with ``|weight| >= tau`` and the nodes that still reach a target.

    With ``relative`` (default: the graph attribute ``relative_tau``) an edge ``u → d``
    needs ``|weight| >= tau × scale(d)``, ``scale`` being the node attribute written by
    circuit discovery. Monotone: a larger ``tau`` never adds an edge. ``ParameterError``
    for NaN/negative tau. The result's ``tau`` graph attribute is the larger of the old and
    the new threshold.
    """
    tau = check_tau(tau)
    if relative is None:
        relative = bool(graph.graph.get("relative_tau", False))
    limits = {}
    for node in graph.nodes:
        if relative:
            scale = graph.nodes[node].get("scale")
            if scale is None:
                raise GraphError(f"node {node!r} has no 'scale' for a relative threshold",
                                 hint="pass relative=False, or a graph from circuit discovery")
            limits[node] = tau * float(scale)
        else:
            limits[node] = tau
    pruned = graph.copy()
    pruned.remove_edges_from([(u, v) for u, v, w in graph.edges(data="weight")
                              if not abs(w) >= limits[v]])
    result = reaching(pruned)
    old = graph.graph.get("tau")
    result.graph["tau"] = tau if old is None else max(float(old), tau)
    return result


def top_k_edges(graph: nx.DiGraph, k: int) -> nx.DiGraph:
    """Keep the ``k`` edges of largest ``|weight|`` (ties broken by edge order) and the
    nodes that still reach a target."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ParameterError(f"k must be a non-negative int, got {k!r}")
    ranked = sorted(graph.edges(data="weight"), key=lambda edge: -abs(edge[2]))
    pruned = graph.copy()
    pruned.remove_edges_from([(u, v) for u, v, _ in ranked[k:]])
    return reaching(pruned)


def edge_list(graph: nx.DiGraph) -> list[tuple[str, str, float]]:
    """``[(source, target, weight)]`` sorted by ``|weight|``, largest first."""
    return sorted(((u, v, float(w)) for u, v, w in graph.edges(data="weight")),
                  key=lambda edge: (-abs(edge[2]), edge[0], edge[1]))


__all__ = ["check_tau", "edge_list", "reaching", "threshold", "top_k_edges"]
