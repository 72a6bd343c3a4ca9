"""The circuit-graph schema (format version 1) and its validation.

A circuit is a ``networkx.DiGraph``; the node, edge and graph attributes are listed in
``docs/graph-format.md``. Every renderer calls :func:`validate_circuit_graph` first so
that a malformed graph fails with a message naming the bad node or edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import networkx as nx

from featcircuits.errors import GraphError, NonFiniteError

FORMAT_VERSION = 1
NODE_KINDS = ("input", "feature", "error", "output")
EDGE_METHODS = ("acdc", "attribution", "hybrid")

# Forward order of the sites inside one transformer block; unknown site kinds sort after.
_SITE_ORDER = {
    "embed": -1,
    "resid_pre": 0,
    "attn_out": 1,
    "resid_mid": 2,
    "mlp_out": 3,
    "resid_out": 4,
}
_KIND_ORDER = {"input": 0, "feature": 1, "error": 1, "output": 2}

RowKey = tuple[int, int, int, str]


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
            hint="drop the node/edge or replace the value with a finite number before rendering",
        )


def validate_circuit_graph(graph: Any) -> nx.DiGraph:
    """Check that ``graph`` follows the circuit-graph schema; return it unchanged.

    Raises:
        GraphError: not a DiGraph, wrong ``format_version``, a node without a valid
            ``kind``/``layer``, an edge without a numeric ``weight``.
        NonFiniteError: NaN/inf in ``weight``, ``effect`` or ``activation``.
    """
    if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
        raise GraphError(
            f"a circuit graph must be a networkx.DiGraph, got {type(graph).__name__}",
            hint="build circuits with networkx.DiGraph() (see docs/graph-format.md)",
        )
    version = graph.graph.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise GraphError(
            f"graph format_version {version!r} is not supported (this version reads {FORMAT_VERSION})",
            hint="re-export the circuit with this version of featcircuits",
        )
    for node, attrs in graph.nodes(data=True):
        if not isinstance(node, str):
            raise GraphError(
                f"node id {node!r} is a {type(node).__name__}, not a str",
                hint="use string ids such as 'resid_out.3/117' or 'resid_out.3/117@5'",
            )
        kind = attrs.get("kind")
        if kind not in NODE_KINDS:
            raise GraphError(
                f"node {node!r} has kind {kind!r}; expected one of {NODE_KINDS}",
                hint="set graph.nodes[node]['kind']",
            )
        layer = attrs.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise GraphError(
                f"node {node!r} has layer {layer!r}; expected an int (embed/input = -1, output = n_layers)",
                hint="set graph.nodes[node]['layer']",
            )
        position = attrs.get("position")
        if position is not None and (
            not isinstance(position, int) or isinstance(position, bool) or position < 0
        ):
            raise GraphError(
                f"node {node!r} has position {position!r}; expected a non-negative int or None",
                hint="positions index the prompt's tokens from 0",
            )
        feature = attrs.get("feature")
        if feature is not None and (not isinstance(feature, int) or isinstance(feature, bool)):
            raise GraphError(
                f"node {node!r} has feature {feature!r}; expected an int or None",
                hint="store the dictionary index as a Python int",
            )
        _check_finite(attrs.get("effect"), f"effect of node {node!r}")
        _check_finite(attrs.get("activation"), f"activation of node {node!r}")
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
        _check_finite(attrs["weight"], f"weight of edge {source!r} -> {target!r}")
    tokens = graph.graph.get("prompt_tokens")
    if tokens is not None and (
        not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens)
    ):
        raise GraphError(
            f"graph attribute prompt_tokens must be a list of str, got {tokens!r}",
            hint="store the decoded prompt tokens, e.g. tokenizer.convert_ids_to_tokens(ids)",
        )
    return graph


def site_kind(site: str | None) -> str:
    """``'resid_out.3'`` -> ``'resid_out'``; ``None`` -> ``''``."""
    if not site:
        return ""
    return site.split(".", 1)[0]


def row_key(attrs: dict[str, Any]) -> RowKey:
    """Sort key of the diagram row a node sits in: inputs, then layers/sites, then outputs."""
    kind = attrs["kind"]
    if kind == "input":
        return (0, -1, -1, "embed")
    if kind == "output":
        return (2, 0, 0, "output")
    site = attrs.get("site") or ""
    return (1, attrs["layer"], _SITE_ORDER.get(site_kind(site), 99), site)


def row_name(key: RowKey) -> str:
    """Human name of a row (its site, ``embed`` or ``output``)."""
    return key[3] or f"layer {key[1]}"


def short_id(node: str, attrs: dict[str, Any]) -> str:
    """The node id without the site prefix (the row names the site) and without ``@pos``
    (the column names the position); feature indices get a ``#``.

    ``'resid_out.3/117@5'`` -> ``'#117'``, ``'resid_out.3/error'`` -> ``'error'``,
    ``'output/logit_diff'`` -> ``'logit_diff'``, ``'input@5'`` -> ``'input'``.
    """
    text = node
    if attrs.get("position") is not None and "@" in text:
        text = text.rsplit("@", 1)[0]
    if "/" in text:
        text = text.split("/", 1)[1]
    if attrs.get("kind") == "feature" and text.isdigit():
        text = f"#{text}"
    return text or node


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def display_token(token: str) -> str:
    """Make whitespace in a prompt token visible: spaces -> '␣', newlines -> '⏎', tabs -> '→'."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def annotation(
    node: str,
    attrs: dict[str, Any],
    labels: dict[str, str] | None,
    top_tokens: dict[str, Iterable[str]] | None,
) -> str:
    """Short annotation: ``labels[node]``, else the first ``top_tokens[node]``, else ``label``."""
    if labels and node in labels:
        return str(labels[node])
    if top_tokens and node in top_tokens:
        return " ".join(display_token(str(t)) for t in list(top_tokens[node])[:3])
    return str(attrs.get("label") or "")


def format_number(value: float | None) -> str:
    """Compact signed number for labels and tables; ``None`` -> ``'–'``."""
    if value is None:
        return "–"
    return f"{value:+.3g}"


def describe_thresholds(graph: nx.DiGraph) -> str:
    """One line naming metric, method, thresholds, model and size, from ``graph.graph``."""
    meta = graph.graph
    parts = []
    if meta.get("metric"):
        parts.append(f"metric: {meta['metric']}")
    if meta.get("method"):
        parts.append(f"method: {meta['method']}")
    tau = meta.get("tau")
    parts.append("τ = " + (f"{tau:g}" if _is_number(tau) else "none"))
    for name in ("node_threshold", "edge_threshold"):
        if _is_number(meta.get(name)):
            parts.append(f"{name.replace('_', ' ')} = {meta[name]:g}")
    if meta.get("model"):
        parts.append(f"model: {meta['model']}")
    parts.append(f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges")
    return " · ".join(parts)
