"""Text and row helpers shared by the renderers: diagram rows (in ``Site.depth`` order, via
``featcircuits.graph.schema.site_depth``), short node names, annotations and numbers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import networkx as nx

from featcircuits.graph.schema import site_depth

#: a diagram row: (group: 0 inputs / 1 sites / 2 outputs, layer, site depth, site name)
RowKey = tuple[int, int, float, str]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def row_key(attrs: dict[str, Any]) -> RowKey:
    """Sort key of the diagram row a node sits in: inputs, then layers and their sites in
    forward order (``Site.depth``; unknown sites last in their layer), then outputs."""
    kind = attrs["kind"]
    if kind == "input":
        return (0, -1, -1.0, "embed")
    if kind == "output":
        return (2, 0, 0.0, "output")
    site = attrs.get("site") or ""
    return (1, attrs["layer"], site_depth(site), site)


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
    pruned = describe_pruning(graph)
    return " · ".join(parts) + (f"\n{pruned}" if pruned else "")


def describe_pruning(graph: nx.DiGraph) -> str:
    """What ``featcircuits.graph.prune`` removed (graph attribute ``pruned``), or ``''``."""
    info = graph.graph.get("pruned")
    if not isinstance(info, dict) or "nodes_before" not in info:
        return ""
    nodes, edges = info["nodes_before"], info.get("edges_before", 0)
    return (f"pruned by influence on the target: kept {graph.number_of_nodes()} of {nodes} "
            f"nodes ({info.get('node_share', 1):.0%} of node influence) and "
            f"{graph.number_of_edges()} of {edges} edges ({info.get('edge_share', 1):.0%} of "
            f"edge influence); {nodes - graph.number_of_nodes()} nodes, "
            f"{edges - graph.number_of_edges()} edges not drawn")
