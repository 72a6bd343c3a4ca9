"""Graphviz DOT export of circuit graphs (text only; Graphviz is not needed to write it).

Layout hints: ``rankdir=BT`` (inputs at the bottom), one ``{rank=same; ...}`` group per
diagram row (inputs ``rank=min``, outputs ``rank=max``). Node fill = effect on the same
RdBu scale as the diagram; edge colour = sign (blue +, red −), ``penwidth`` ∝ |weight|.
The signed numbers travel as extra attributes (``circuit_weight``, ``circuit_effect``,
``circuit_kind``), which Graphviz keeps and ignores.

Quoting: every id and string is double-quoted; inside, ``\\`` becomes ``\\\\``,
``"`` becomes ``\\"`` and a newline becomes ``\\n``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import networkx as nx
from matplotlib.colors import to_hex

from featcircuits.graph.schema import validate_circuit_graph
from featcircuits.render.labels import annotation, describe_thresholds, row_key, truncate
from featcircuits.render.layout import natural_key
from featcircuits.render.style import (
    ERROR_OUTLINE,
    NODE_OUTLINE,
    edge_alpha,
    edge_color,
    edge_width,
    effect_rgba,
    symmetric_limit,
    text_color_on,
)
from featcircuits.writes import atomic_write_text

_SHAPES = {"feature": "ellipse", "error": "box", "input": "diamond", "output": "hexagon"}


def quote(text: str) -> str:
    """A DOT double-quoted string holding ``text``."""
    escaped = (
        str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    )
    return f'"{escaped}"'


def _attributes(pairs: Iterable[tuple[str, object]]) -> str:
    parts = []
    for key, value in pairs:
        if isinstance(value, float):
            value = repr(value)  # shortest text that reads back as the same float
        parts.append(f"{key}={quote(str(value))}")
    return "[" + ", ".join(parts) + "]"


def to_dot(
    graph: nx.DiGraph,
    *,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
    top_tokens: Mapping[str, Iterable[str]] | None = None,
    max_annotation_chars: int = 40,
) -> str:
    """Graphviz DOT text for a circuit graph (nodes and edges in a stable, sorted order)."""
    validate_circuit_graph(graph)
    heading = (
        title
        if title is not None
        else f"Circuit for {graph.graph.get('target') or 'unnamed target'}"
    )
    effect_limit = symmetric_limit(a.get("effect") for _, a in graph.nodes(data=True))
    weight_limit = symmetric_limit(w for _, _, w in graph.edges(data="weight"))

    lines = [
        "// circuit graph written by featcircuits (format_version 1)",
        "digraph circuit {",
        "  graph "
        + _attributes(
            [
                ("rankdir", "BT"),
                ("newrank", "true"),
                ("nodesep", "0.3"),
                ("ranksep", "0.6"),
                ("fontname", "Helvetica"),
                ("labelloc", "t"),
                ("label", f"{heading}\n{describe_thresholds(graph)}"),
            ]
        )
        + ";",
        "  node "
        + _attributes([("fontname", "Helvetica"), ("fontsize", "10"), ("style", "filled")])
        + ";",
        "  edge " + _attributes([("arrowsize", "0.6")]) + ";",
    ]
    rows: dict[tuple, list[str]] = defaultdict(list)
    for node in graph.nodes:
        rows[row_key(graph.nodes[node])].append(node)
    for key in sorted(rows):
        members = sorted(rows[key], key=natural_key)
        rank = {0: "min", 2: "max"}.get(key[0], "same")
        lines.append(f"  {{ rank={rank}; " + " ".join(f"{quote(n)};" for n in members) + " }")

    def order(node: str) -> tuple:
        return (row_key(graph.nodes[node]), natural_key(node))

    for node in sorted(graph.nodes, key=order):
        attrs = graph.nodes[node]
        fill = effect_rgba(attrs.get("effect"), effect_limit)
        note = truncate(annotation(node, attrs, labels, top_tokens), max_annotation_chars)
        label = node if not note else f"{node}\n{note}"
        pairs: list[tuple[str, object]] = [
            ("label", label),
            ("shape", _SHAPES[attrs["kind"]]),
            ("fillcolor", to_hex(fill)),
            ("fontcolor", text_color_on(fill)),
        ]
        if attrs["kind"] == "error":
            pairs += [("style", "filled,dashed"), ("color", ERROR_OUTLINE)]
        else:
            pairs.append(("color", NODE_OUTLINE))
        pairs.append(("circuit_kind", attrs["kind"]))
        if attrs.get("effect") is not None:
            pairs.append(("circuit_effect", float(attrs["effect"])))
        if attrs.get("activation") is not None:
            pairs.append(("circuit_activation", float(attrs["activation"])))
        effect_text = "none" if attrs.get("effect") is None else f"{attrs['effect']:+.4g}"
        pairs.append(("tooltip", f"{node}\neffect {effect_text}"))
        lines.append(f"  {quote(node)} {_attributes(pairs)};")

    for source, target in sorted(graph.edges, key=lambda e: (order(e[0]), order(e[1]))):
        weight = float(graph.edges[source, target]["weight"])
        alpha = round(edge_alpha(weight, weight_limit) * 255)
        pairs = [
            ("color", f"{edge_color(weight)}{alpha:02x}"),
            ("penwidth", round(edge_width(weight, weight_limit), 3)),
            ("circuit_weight", weight),
            ("tooltip", f"{source} -> {target}: {weight:+.4g}"),
        ]
        method = graph.edges[source, target].get("method")
        if method:
            pairs.append(("circuit_method", str(method)))
        lines.append(f"  {quote(source)} -> {quote(target)} {_attributes(pairs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(graph: nx.DiGraph, path: str | os.PathLike[str], **kwargs) -> Path:
    """Write :func:`to_dot` output to ``path`` atomically (UTF-8); return the path."""
    return atomic_write_text(path, to_dot(graph, **kwargs))
