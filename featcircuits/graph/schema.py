"""The circuit-graph schema (format version 1): the one place that defines it.

A circuit is a ``networkx.DiGraph``; the node, edge and graph attributes are listed in
``docs/graph-format.md``. This module owns

* the format version (:data:`FORMAT_VERSION`, :func:`check_format_version`);
* node ids (:func:`make_node_id`, :func:`parse_node_id`, :class:`NodeKey`);
* the node / edge attribute names (:data:`NODE_ATTRIBUTES`, :data:`EDGE_ATTRIBUTES`) and
  their validation (:func:`check_graph` for what graph operations and files need,
  :func:`validate_circuit_graph` for the full schema every renderer reads);
* the order of sites (:func:`site_depth`, derived from ``Site.depth``: no separate table).

Node ids are strings:

=====================================  ==========================================
``"resid_out.3/117"``                  feature 117 of the dictionary at resid_out.3
``"resid_out.3/117@5"``                the same feature at token position 5 only
``"resid_out.3/error"`` (``@5``)       the dictionary's error term at that site
``"embed/42"`` (``@5``)                feature 42 of a dictionary at the embedding
``"input@5"``                          the whole input embedding at position 5
``"output/logit_diff"``                an output (a metric or a logit)
=====================================  ==========================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import networkx as nx

from featcircuits.errors import FeatCircuitsError, GraphError, NonFiniteError
from featcircuits.model.sites import Site

FORMAT_VERSION = 1
NODE_KINDS = ("feature", "error", "input", "output")
EDGE_METHODS = ("acdc", "attribution", "hybrid")
#: node attributes of the schema, in table-column order
NODE_ATTRIBUTES = ("kind", "site", "layer", "feature", "position", "activation", "effect",
                   "label")
#: edge attributes of the schema
EDGE_ATTRIBUTES = ("weight", "method")
#: schema attributes stored as ints / as floats (files restore these types)
INT_ATTRIBUTES = ("layer", "feature", "position")
FLOAT_ATTRIBUTES = ("activation", "effect", "weight")
#: positions must be below this (2**17 = 131 072 tokens, the longest context of the models
#: featcircuits loads): renderers draw one band per position up to the largest one
MAX_POSITION = 2**17

_ID_RE = re.compile(
    r"^(?:(?P<output>output/(?P<name>.+))"
    r"|(?P<input>input(?:@(?P<input_pos>\d+))?)"
    r"|(?P<site>[^/@]+)/(?P<what>error|\d+)(?:@(?P<pos>\d+))?)$"
)


# ---------------------------------------------------------------------------- node ids
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


def _check_index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GraphError(f"{what} must be a non-negative int, got {value!r}",
                         hint=f"pass the {what} as a Python int >= 0")
    return value


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


# -------------------------------------------------------------------------- site order
def site_depth(site: str | Site | None) -> float:
    """Forward-pass order of a site: ``Site.parse(site).depth`` (``embed`` = -1,
    ``resid_in.L`` < ``attn_out.L`` < ``mlp_in.L`` < ``mlp_out.L`` < ``resid_out.L`` <
    ``resid_in.L+1``). Sites that do not parse (and ``None``) sort last (``inf``)."""
    if site is None or site == "":
        return math.inf
    try:
        return float(Site.parse(site).depth)
    except FeatCircuitsError:
        return math.inf


def site_kind(site: str | None) -> str:
    """``'resid_out.3'`` -> ``'resid_out'``; ``None`` -> ``''``."""
    if not site:
        return ""
    return site.split(".", 1)[0]


# -------------------------------------------------------------------------- validation
def check_format_version(version: Any, source: str = "circuit graph") -> None:
    """``GraphError`` unless ``version`` is :data:`FORMAT_VERSION`."""
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise GraphError(
            f"{source} has circuit format_version {version!r}; this featcircuits reads "
            f"version {FORMAT_VERSION}",
            hint="re-export the circuit with a featcircuits that writes version "
            f"{FORMAT_VERSION}, or read it with the featcircuits version that wrote it",
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_finite(value: Any, what: str) -> None:
    if value is None:
        return
    if not _is_number(value):
        raise GraphError(
            f"{what} must be a number or None, got {value!r}",
            hint="store plain Python floats (float(tensor.item())) in the graph",
        )
    if not math.isfinite(value):
        raise NonFiniteError(
            f"{what} is {value!r}",
            hint="drop the node/edge or replace the value with a finite number",
        )


def _check_position(node: Any, position: Any) -> None:
    if position is None:
        return
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise GraphError(
            f"node {node!r} has position {position!r}; expected a non-negative int or None",
            hint="positions index the prompt's tokens from 0",
        )
    if position >= MAX_POSITION:
        raise GraphError(
            f"node {node!r} has position {position}, beyond the limit of {MAX_POSITION - 1}",
            hint="positions index the prompt's tokens; a position this large is a damaged "
            "or hand-edited value (store position=None for a node summed over positions)",
        )


def check_graph(graph: Any) -> nx.DiGraph:
    """The checks graph operations and graph files need; returns ``graph`` unchanged.

    ``GraphError`` unless ``graph`` is a DiGraph of format version 1 whose nodes carry a
    ``kind`` of :data:`NODE_KINDS` and a ``position`` that is None or an int in
    ``[0, MAX_POSITION)``, and whose edges carry a numeric ``weight`` (no self-loops);
    ``NonFiniteError`` for a NaN/inf weight.
    """
    if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
        raise GraphError(
            f"a circuit graph must be a networkx.DiGraph, got {type(graph).__name__}",
            hint="build circuits with networkx.DiGraph() (see docs/graph-format.md)",
        )
    check_format_version(graph.graph.get("format_version", FORMAT_VERSION))
    for node, attrs in graph.nodes(data=True):
        kind = attrs.get("kind")
        if not isinstance(kind, str) or kind not in NODE_KINDS:
            raise GraphError(
                f"node {node!r} has kind {kind!r}; expected one of {NODE_KINDS}",
                hint="set graph.nodes[node]['kind']",
            )
        _check_position(node, attrs.get("position"))
    for source, target, attrs in graph.edges(data=True):
        if source == target:
            raise GraphError(
                f"edge {source!r} -> {target!r} is a self-loop",
                hint="a node's effect on itself is not an edge of a circuit; remove it",
            )
        if "weight" not in attrs:
            raise GraphError(
                f"edge {source!r} -> {target!r} has no 'weight'",
                hint="every edge needs a signed float 'weight' (its measured effect)",
            )
        if not _is_number(attrs["weight"]):
            raise GraphError(f"edge {source!r} -> {target!r} has weight {attrs['weight']!r}",
                             hint="every edge needs a float 'weight'")
        _check_finite(attrs["weight"], f"weight of edge {source!r} -> {target!r}")
    return graph


def validate_circuit_graph(graph: Any) -> nx.DiGraph:
    """Check that ``graph`` follows the full circuit-graph schema; return it unchanged.

    Every renderer calls this first, so a malformed graph fails naming the bad node/edge.

    Raises:
        GraphError: not a DiGraph, wrong ``format_version``, a node without a valid
            ``kind``/``layer``, an edge without a numeric ``weight``.
        NonFiniteError: NaN/inf in ``weight``, ``effect`` or ``activation``.
    """
    check_graph(graph)
    for node, attrs in graph.nodes(data=True):
        if not isinstance(node, str):
            raise GraphError(
                f"node id {node!r} is a {type(node).__name__}, not a str",
                hint="use string ids such as 'resid_out.3/117' or 'resid_out.3/117@5'",
            )
        layer = attrs.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise GraphError(
                f"node {node!r} has layer {layer!r}; expected an int (embed/input = -1, "
                "output = n_layers)",
                hint="set graph.nodes[node]['layer']",
            )
        feature = attrs.get("feature")
        if feature is not None and (not isinstance(feature, int) or isinstance(feature, bool)):
            raise GraphError(
                f"node {node!r} has feature {feature!r}; expected an int or None",
                hint="store the dictionary index as a Python int",
            )
        _check_finite(attrs.get("effect"), f"effect of node {node!r}")
        _check_finite(attrs.get("activation"), f"activation of node {node!r}")
    tokens = graph.graph.get("prompt_tokens")
    if tokens is not None and (
        not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens)
    ):
        raise GraphError(
            f"graph attribute prompt_tokens must be a list of str, got {tokens!r}",
            hint="store the decoded prompt tokens, e.g. tokenizer.convert_ids_to_tokens(ids)",
        )
    return graph


def target_nodes(graph: nx.DiGraph) -> list[str]:
    """The circuit's target node ids: graph attribute ``target_nodes``, else output nodes."""
    listed = graph.graph.get("target_nodes")
    if listed:
        return [node for node in listed if node in graph]
    return [node for node, kind in graph.nodes(data="kind") if kind == "output"]


__all__ = [
    "EDGE_ATTRIBUTES",
    "EDGE_METHODS",
    "FLOAT_ATTRIBUTES",
    "FORMAT_VERSION",
    "INT_ATTRIBUTES",
    "MAX_POSITION",
    "NODE_ATTRIBUTES",
    "NODE_KINDS",
    "NodeKey",
    "check_format_version",
    "check_graph",
    "make_node_id",
    "parse_node_id",
    "site_depth",
    "site_kind",
    "target_nodes",
    "validate_circuit_graph",
]
