"""The HTML viewer's side-panel table (a node's attributes and strongest edges) and legend."""

from __future__ import annotations

import html

import networkx as nx

from featcircuits.render.labels import format_number, truncate
from featcircuits.render.style import (
    ERROR_OUTLINE,
    NEGATIVE_COLOR,
    NODE_OUTLINE,
    POSITIVE_COLOR,
    effect_cmap,
)

__all__ = ["attribute_table", "legend"]


def _text(value: object) -> str:
    return html.escape(str(value), quote=False)


def attribute_table(graph: nx.DiGraph, node: str) -> str:
    """Escaped HTML: the node's attributes and its ten strongest in/out edges."""
    attrs = graph.nodes[node]
    rows = []
    for key in ("kind", "site", "layer", "feature", "position", "activation", "effect", "label"):
        value = attrs.get(key)
        shown = (
            format_number(value)
            if key in ("activation", "effect")
            else ("–" if value in (None, "") else value)
        )
        rows.append(f"<tr><th>{_text(key)}</th><td>{_text(shown)}</td></tr>")
    extra = sorted(
        k
        for k in attrs
        if k
        not in {"kind", "site", "layer", "feature", "position", "activation", "effect", "label"}
    )
    for key in extra:
        rows.append(
            f"<tr><th>{_text(key)}</th><td>{_text(truncate(str(attrs[key]), 200))}</td></tr>"
        )
    parts = [f'<table class="attributes">{"".join(rows)}</table>']
    for title, edges, other in (
        ("strongest inputs", graph.in_edges(node, data="weight"), 0),
        ("strongest outputs", graph.out_edges(node, data="weight"), 1),
    ):
        edges = sorted(edges, key=lambda e: (-abs(e[2]), e[other]))[:10]
        if not edges:
            continue
        items = "".join(
            f"<tr><td>{_text(edge[other])}</td><td>{_text(format_number(edge[2]))}</td></tr>"
            for edge in edges
        )
        parts.append(f"<h3>{_text(title)}</h3><table>{items}</table>")
    return "".join(parts)


def legend(effect_limit: float, metric: str) -> str:
    """The legend: node shapes, edge colours and the effect colour scale."""
    cmap = effect_cmap()
    stops = ", ".join(
        f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)}) {round(100 * t)}%"
        for t in (0, 0.25, 0.5, 0.75, 1.0)
        for r, g, b, _ in [cmap(t)]
    )
    swatch = '<svg class="legend-shape" width="16" height="16" viewBox="0 0 16 16">{}</svg>'
    items = [
        (
            "feature",
            swatch.format(f'<circle cx="8" cy="8" r="6" fill="#fff" stroke="{NODE_OUTLINE}"/>'),
        ),
        (
            "error (SAE residual)",
            swatch.format(
                f'<rect x="2" y="2" width="12" height="12" fill="url(#hatch)" stroke="{ERROR_OUTLINE}" '
                'stroke-dasharray="3 2"/>'
            ),
        ),
        (
            "input / embedding",
            swatch.format(
                f'<polygon points="8,1 15,8 8,15 1,8" fill="#fff" stroke="{NODE_OUTLINE}"/>'
            ),
        ),
        (
            "output (metric)",
            swatch.format(
                f'<polygon points="8,1 14,4.5 14,11.5 8,15 2,11.5 2,4.5" fill="#fff" stroke="{NODE_OUTLINE}"/>'
            ),
        ),
        (
            "edge, weight &gt; 0",
            swatch.format(
                f'<line x1="1" y1="8" x2="15" y2="8" stroke="{POSITIVE_COLOR}" stroke-width="3"/>'
            ),
        ),
        (
            "edge, weight &lt; 0",
            swatch.format(
                f'<line x1="1" y1="8" x2="15" y2="8" stroke="{NEGATIVE_COLOR}" stroke-width="3"/>'
            ),
        ),
    ]
    spans = "".join(f"<span>{shape}{label}</span>" for label, shape in items)
    scale = (
        f"<span>node effect on {_text(metric)}: {_text(f'{-effect_limit:.3g}')} "
        f'<i class="scale" style="background: linear-gradient(to right, {stops})"></i> '
        f"{_text(f'{effect_limit:+.3g}')}</span>"
    )
    return f'<div class="legend">{spans}{scale}</div>'
