"""Graph operations over circuit graphs (``networkx.DiGraph`` of the schema in
``featcircuits.graph.schema`` / ``docs/graph-format.md``): thresholds, top-k, reaching.

Node ids, the format version and validation live in :mod:`featcircuits.graph.schema`
and influence in :mod:`featcircuits.graph.influence` (``prune``).

Every function here takes a graph and returns a new graph (the input is never modified).
Which nodes are the circuit's targets is read from the graph attribute ``target_nodes``
(a list of node ids; written by circuit discovery), falling back to the output nodes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import networkx as nx

from featcircuits.errors import CircuitWarning, GraphError, ParameterError
from featcircuits.graph.influence import grow_top_k, keep_connected, strongest_path
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
def reaching(graph: nx.DiGraph, targets: Iterable[str] | str | None = None, *,
             copy: bool = True) -> nx.DiGraph:
    """The sub-graph of nodes with a directed path to any of ``targets`` (targets included).

    ``targets`` defaults to ``target_nodes(graph)``. Unknown target ids raise ``GraphError``.
    ``copy=False`` removes the other nodes from ``graph`` itself and returns it (as in
    ``networkx.relabel_nodes``): no second copy of a large graph's edges is made.
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
    if not copy:
        graph.remove_nodes_from([node for node in graph if node not in keep])
        return graph
    return graph.subgraph(keep).copy()


def threshold(graph: nx.DiGraph, tau: float, *, relative: bool | None = None) -> nx.DiGraph:
    """Keep edges with ``|weight| >= tau`` and the nodes that still reach a target.

    With ``relative`` (default: the graph attribute ``relative_tau``) an edge ``u → d``
    needs ``|weight| >= tau × scale(d)``, ``scale`` being the node attribute written by
    circuit discovery. A target is never cut off: when ``tau`` would remove every edge into
    a target that has some, the target keeps its strongest path (the path from a source
    whose weakest edge, ``|weight| / scale(d)`` when relative, is largest:
    ``influence.strongest_path``) and a ``CircuitWarning`` names ``tau`` and the value that
    keeps that path. Below that value a larger ``tau`` never adds an edge.
    ``ParameterError`` for NaN/negative tau. The result's ``tau`` graph attribute is the
    larger of the old and the new threshold.
    """
    tau = check_tau(tau)
    if relative is None:
        relative = bool(graph.graph.get("relative_tau", False))
    scales = {}
    for node in graph.nodes:
        if relative:
            scale = graph.nodes[node].get("scale")
            if scale is None:
                raise GraphError(f"node {node!r} has no 'scale' for a relative threshold",
                                 hint="pass relative=False, or a graph from circuit discovery")
            scales[node] = float(scale)
        else:
            scales[node] = 1.0
    pruned = graph.copy()
    pruned.remove_edges_from([(u, v) for u, v, w in graph.edges(data="weight")
                              if not abs(w) >= tau * scales[v]])

    def score(u: str, v: str) -> float:
        weight = abs(graph.edges[u, v]["weight"])
        return weight / scales[v] if scales[v] > 0 else math.inf

    found = target_nodes(graph)
    result = keep_connected(graph, pruned, found, score)
    for node in found:
        if graph.in_degree(node) and not pruned.in_degree(node):
            _, width = strongest_path(graph, node, score)
            warnings.warn(
                f"threshold tau={tau:g} removes every edge into target {node!r}; kept its "
                f"strongest path instead (tau <= {width:.4g} keeps that path by the rule)",
                CircuitWarning, stacklevel=2)
    old = graph.graph.get("tau")
    result.graph["tau"] = tau if old is None else max(float(old), tau)
    return result


def top_k_edges(graph: nx.DiGraph, k: int) -> nx.DiGraph:
    """The ``k`` most influential edges (``featcircuits.graph.influence``) that stay
    connected to a target, and their nodes.

    Grown backwards from the targets: starting with the edges into the targets, always the
    most influential edge into the kept nodes is added next, so every kept edge lies on a
    path to a target and ``k >= 1`` never cuts a target off. Edge influence is a flow
    (the influence of a node's incoming edges sums to its own), so this nearly always equals
    the plain top ``k`` by influence, which is not guaranteed to be connected.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ParameterError(f"k must be a non-negative int, got {k!r}")
    return grow_top_k(graph, k, target_nodes(graph))


def edge_list(graph: nx.DiGraph) -> list[tuple[str, str, float]]:
    """``[(source, target, weight)]`` sorted by ``|weight|``, largest first."""
    return sorted(((u, v, float(w)) for u, v, w in graph.edges(data="weight")),
                  key=lambda edge: (-abs(edge[2]), edge[0], edge[1]))


__all__ = ["check_tau", "edge_list", "reaching", "threshold", "top_k_edges"]
