"""Circuit graphs: node ids and plain functions over ``networkx.DiGraph`` circuits.

A circuit is a ``networkx.DiGraph`` following the schema of ``docs/graph-format.md``
(format version 1). Node ids are strings:

=====================================  ==========================================
``"resid_out.3/117"``                  feature 117 of the dictionary at resid_out.3
``"resid_out.3/117@5"``                the same feature at token position 5 only
``"resid_out.3/error"`` (``@5``)       the dictionary's error term at that site
``"embed/42"`` (``@5``)                feature 42 of a dictionary at the embedding
``"input@5"``                          the whole input embedding at position 5
``"output/logit_diff"``                an output (a metric or a logit)
=====================================  ==========================================

Every function here takes a graph and returns a new graph (the input is never modified).
Which nodes are the circuit's targets is read from the graph attribute ``target_nodes``
(a list of node ids; written by circuit discovery), falling back to the output nodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from featcircuits.errors import GraphError, NonFiniteError, ParameterError

FORMAT_VERSION = 1
NODE_KINDS = ("feature", "error", "input", "output")
EDGE_METHODS = ("acdc", "attribution", "hybrid")
NODE_ATTRIBUTES = ("kind", "site", "layer", "feature", "position", "activation", "effect",
                   "label")

_ID_RE = re.compile(
    r"^(?:(?P<output>output/(?P<name>.+))"
    r"|(?P<input>input(?:@(?P<input_pos>\d+))?)"
    r"|(?P<site>[^/@]+)/(?P<what>error|\d+)(?:@(?P<pos>\d+))?)$"
)


@dataclass(frozen=True)
class NodeKey:
    """The parts of a node id. ``feature`` is None for error, input and output nodes."""

    kind: str
    site: str | None = None
    feature: int | None = None
    position: int | None = None
    name: str | None = None  # output name

    @property
    def id(self) -> str:
        return make_node_id(self.site, self.feature, self.position, kind=self.kind,
                            name=self.name)


def make_node_id(site: str | None = None, feature: int | None = None,
                 position: int | None = None, *, kind: str | None = None,
                 name: str | None = None) -> str:
    """Build a node id.

    ``make_node_id("resid_out.3", 117)`` → ``"resid_out.3/117"``;
    ``make_node_id("resid_out.3", position=5, kind="error")`` → ``"resid_out.3/error@5"``;
    ``make_node_id(kind="output", name="logit_diff")`` → ``"output/logit_diff"``;
    ``make_node_id(kind="input", position=5)`` → ``"input@5"``.
    """
    if kind is None:
        kind = "feature" if feature is not None else "error"
    suffix = "" if position is None else f"@{_check_index(position, 'position')}"
    if kind == "output":
        if not name or "\n" in name:
            raise GraphError(f"an output node needs a one-line name, got {name!r}",
                             hint="e.g. make_node_id(kind='output', name='logit_diff')")
        return f"output/{name}"
    if kind == "input" and site is None:
        return f"input{suffix}"
    if not site or "/" in str(site) or "@" in str(site):
        raise GraphError(f"invalid site {site!r} for a node id",
                         hint="use a site name such as 'resid_out.3' or 'embed'")
    if kind == "error":
        return f"{site}/error{suffix}"
    if kind not in ("feature", "input"):
        raise GraphError(f"unknown node kind {kind!r}", hint=f"use one of {NODE_KINDS}")
    return f"{site}/{_check_index(feature, 'feature')}{suffix}"


def _check_index(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GraphError(f"{what} must be a non-negative int, got {value!r}")
    return value


def parse_node_id(node_id: str) -> NodeKey:
    """Split a node id into its parts; ``GraphError`` if it is not of the schema's forms.

    Features at the ``embed`` site parse as kind ``"input"``.
    """
    match = _ID_RE.match(node_id) if isinstance(node_id, str) else None
    if match is None:
        raise GraphError(
            f"cannot parse node id {node_id!r}",
            hint="node ids look like 'resid_out.3/117', 'resid_out.3/117@5', "
            "'resid_out.3/error', 'input@5' or 'output/logit_diff'",
        )
    if match.group("output"):
        return NodeKey("output", name=match.group("name"))
    if match.group("input"):
        position = match.group("input_pos")
        return NodeKey("input", position=None if position is None else int(position))
    site, what, position = match.group("site"), match.group("what"), match.group("pos")
    position = None if position is None else int(position)
    if what == "error":
        return NodeKey("error", site, None, position)
    kind = "input" if site == "embed" else "feature"
    return NodeKey(kind, site, int(what), position)


# ------------------------------------------------------------------------------ checks
def check_tau(tau, name: str = "tau") -> float:
    """A threshold as a float; ``ParameterError`` for NaN, negative or non-numbers."""
    try:
        value = float(tau)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} must be a number, got {tau!r}",
                             hint=f"pass e.g. {name}=0.05") from exc
    if math.isnan(value) or value < 0:
        raise ParameterError(f"{name} must be >= 0 and not NaN, got {tau!r}",
                             hint=f"pass a non-negative threshold, e.g. {name}=0.05")
    return value


def check_graph(graph) -> nx.DiGraph:
    """``GraphError`` unless ``graph`` is a DiGraph of format version 1 whose nodes carry a
    ``kind`` and whose edges carry a ``weight``; returns it unchanged."""
    if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
        raise GraphError(f"a circuit must be a networkx.DiGraph, got {type(graph).__name__}",
                         hint="circuits are built by acdc_circuit / attribution_circuit")
    version = graph.graph.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise GraphError(
            f"circuit graph format_version {version!r} is not supported (this featcircuits "
            f"reads version {FORMAT_VERSION})",
            hint="re-create the circuit with this featcircuits version, or upgrade featcircuits",
        )
    for node, attrs in graph.nodes(data=True):
        if attrs.get("kind") not in NODE_KINDS:
            raise GraphError(f"node {node!r} has kind {attrs.get('kind')!r}",
                             hint=f"kind must be one of {NODE_KINDS}")
    for source, target, attrs in graph.edges(data=True):
        weight = attrs.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise GraphError(f"edge {source!r} -> {target!r} has weight {weight!r}",
                             hint="every edge needs a float 'weight'")
        if not math.isfinite(weight):
            raise NonFiniteError(f"edge {source!r} -> {target!r} has weight {weight!r}",
                                 hint="every edge needs a finite weight")
    return graph


def target_nodes(graph: nx.DiGraph) -> list[str]:
    """The circuit's target node ids: graph attribute ``target_nodes``, else output nodes."""
    listed = graph.graph.get("target_nodes")
    if listed:
        return [node for node in listed if node in graph]
    return [node for node, kind in graph.nodes(data="kind") if kind == "output"]


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
