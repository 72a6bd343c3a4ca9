"""One self-contained, interactive HTML page per circuit (the viewer).

The page holds the diagram as inline SVG (the layered layout of
:mod:`featcircuits.render.layout`, computed in Python), inline CSS and inline JavaScript;
it loads nothing from anywhere (a Content-Security-Policy forbids it), so it works offline
and can be mailed around as one file. The CSS and JavaScript live next to this module as
package data (``viewer/viewer.css``, ``viewer/viewer.js``) and are copied into every page.

- ``<g class="node" data-id=...>`` per node (hover card data: ``data-label``,
  ``data-contexts`` / ``data-up`` / ``data-down`` as JSON lists), ``<path class="edge"
  data-weight=...>`` per edge, both inside ``<g class="tier">`` groups by their slider key
  (:mod:`featcircuits.render.shares`): the node and edge sliders hide whole groups;
- the page opens fitted to the window with the targets inside; wheel / buttons zoom, drag
  pans, ``fit`` resets; the search box finds nodes by feature index, id or label;
- hovering a node highlights it, its edges and neighbours, and shows its card;
- clicking a node opens the side panel with its dashboard (``dashboards[node]``, an
  HTML fragment inserted as is) or, without one, a table of its attributes and edges.

All graph text (ids, labels, tokens, metadata) is HTML-escaped; dashboard fragments are
trusted HTML and are not.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import networkx as nx

from featcircuits.errors import ParameterError
from featcircuits.graph.schema import validate_circuit_graph
from featcircuits.render.labels import (
    annotation,
    describe_thresholds,
    display_token,
    format_number,
    short_id,
    truncate,
)
from featcircuits.render.layout import ALL_POSITIONS, CircuitLayout, LayoutSpec, layered_layout
from featcircuits.render.limits import HTML_MAX_NODES, HTML_MAX_POSITIONS, check_render_size
from featcircuits.render.panels import attribute_table, legend
from featcircuits.render.shares import EDGE_STEPS, NODE_STEPS, SliderKeys, slider_keys, tier
from featcircuits.render.style import (
    ERROR_OUTLINE,
    NEGATIVE_COLOR,
    NODE_OUTLINE,
    POSITIVE_COLOR,
    edge_alpha,
    edge_color,
    edge_strength,
    edge_width,
    effect_hex,
    symmetric_limit,
)
from featcircuits.writes import atomic_write_text

_FONT_PX = 11.0
_CHAR_PX = 6.7  # advance of a monospace glyph at 11 px (DejaVu Sans Mono: 0.602 em), rounded up
_LINE_PX = 13.0
_TOKEN_FONT_PX = 11.0
_RADIUS = 10.0
_MARGIN_TOP = 14.0
_MARGIN_RIGHT = 16.0
_MARGIN_BOTTOM = 8.0

_SPEC = LayoutSpec(
    node_radius=_RADIUS,
    slot_width=44.0,
    label_gap=4.0,
    label_hgap=8.0,
    row_gap=34.0,
    band_pad=10.0,
    token_gap=10.0,
    max_aspect=2.0,
)

_FULL_BELOW = 200  # graphs up to this many nodes open unpruned; larger ones at share 0.8
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; font-src data:"


@functools.cache
def _viewer_file(name: str) -> str:
    """The text of one viewer file (package data under ``featcircuits/render/viewer/``)."""
    return resources.files("featcircuits.render").joinpath("viewer").joinpath(name).read_text(
        encoding="utf-8"
    )


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: object) -> str:
    return html.escape(str(value), quote=False)


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"


def _label_lines(node: str, attrs: dict, labels, top_tokens) -> list[str]:
    head = short_id(node, attrs)
    note = truncate(annotation(node, attrs, labels, top_tokens), 22)
    if note and note.replace("_", " ").lower() != head.replace("_", " ").lower():
        return [head, note]
    return [head]


def _text_size(lines: list[str], char_px: float, line_px: float) -> tuple[float, float]:
    return (max(len(line) for line in lines) * char_px, len(lines) * line_px)


def _token_lines(token: str | None, position: int | None) -> list[str]:
    if position is ALL_POSITIONS:
        return ["all", "positions"]
    return [truncate(display_token(token), 14) if token is not None else "·", str(position)]


class _Canvas:
    """Maps layout coordinates (y up) to SVG coordinates (y down)."""

    def __init__(self, layout: CircuitLayout, left: float) -> None:
        self.layout = layout
        self.left = left
        self.width = left + layout.width + _MARGIN_RIGHT
        self.height = _MARGIN_TOP + layout.height + _MARGIN_BOTTOM

    def x(self, x: float) -> float:
        return self.left + x

    def y(self, y: float) -> float:
        return _MARGIN_TOP + self.layout.height - y


def _shape(kind: str, x: float, y: float, fill: str) -> str:
    r = _RADIUS
    if kind == "error":
        side = 1.7 * r
        box = f'x="{_num(x - side / 2)}" y="{_num(y - side / 2)}" width="{_num(side)}" height="{_num(side)}"'
        return (
            f'<rect class="shape" {box} fill="{fill}" stroke="{ERROR_OUTLINE}" stroke-width="1.4" '
            f'stroke-dasharray="3 2"/><rect {box} fill="url(#hatch)" pointer-events="none"/>'
        )
    if kind in ("input", "output"):
        sides, radius, offset = (4, 1.25 * r, 0.0) if kind == "input" else (6, 1.3 * r, math.pi / 6)
        points = " ".join(
            f"{_num(x + radius * math.sin(offset + 2 * math.pi * k / sides))},"
            f"{_num(y - radius * math.cos(offset + 2 * math.pi * k / sides))}"
            for k in range(sides)
        )
        width = 1.6 if kind == "output" else 1.0
        return f'<polygon class="shape" points="{points}" fill="{fill}" stroke="{NODE_OUTLINE}" stroke-width="{width}"/>'
    return f'<circle class="shape" cx="{_num(x)}" cy="{_num(y)}" r="{_num(r)}" fill="{fill}" stroke="{NODE_OUTLINE}" stroke-width="1"/>'


def _edge_path(x1: float, y1: float, x2: float, y2: float, curved: bool) -> str:
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy) or 1.0
    if curved:
        bend = 0.25 if dx >= 0 else -0.25
        cx, cy = (x1 + x2) / 2 + bend * dy, (y1 + y2) / 2 - bend * dx
    else:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2

    def toward(px, py, qx, qy, distance):
        span = math.hypot(qx - px, qy - py) or 1.0
        return px + (qx - px) * distance / span, py + (qy - py) * distance / span

    sx, sy = toward(x1, y1, cx, cy, min(_RADIUS + 1.5, length / 3))
    ex, ey = toward(x2, y2, cx, cy, min(_RADIUS + 2.5, length / 3))
    if curved:
        return f"M{_num(sx)},{_num(sy)} Q{_num(cx)},{_num(cy)} {_num(ex)},{_num(ey)}"
    return f"M{_num(sx)},{_num(sy)} L{_num(ex)},{_num(ey)}"


def _key(value: float) -> str:
    return f"{value:.6f}"


def _card_data(attrs: dict) -> dict[str, str]:
    """Hover-card fields set by ``dashboards.label_features`` (JSON lists), when present."""
    out = {}
    for key, name in (("top_contexts", "contexts"), ("logit_up", "up"), ("logit_down", "down")):
        value = attrs.get(key)
        if isinstance(value, str):
            value = [value]
        if value:
            shown = [str(v) if key == "top_contexts" else display_token(str(v)) for v in value]
            out[name] = json.dumps(shown, ensure_ascii=False)
    return out


def _svg(graph: nx.DiGraph, layout: CircuitLayout, lines_of: dict[str, list[str]],
         keys: SliderKeys) -> str:
    row_name_px = max((len(row.name) for row in layout.rows), default=5) * 7.2 + 14
    canvas = _Canvas(layout, left=row_name_px)
    effect_limit = symmetric_limit(a.get("effect") for _, a in graph.nodes(data=True))
    weight_limit = symmetric_limit(w for _, _, w in graph.edges(data="weight"))
    targets = " ".join(_attr(t) for t in keys.targets)
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="100%" '
            f'data-width="{_num(canvas.width)}" data-height="{_num(canvas.height)}" '
            f'role="img" aria-label="circuit diagram">'
        ),
        "<defs>",
        (
            '<pattern id="hatch" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
            f'<line x1="0" y1="0" x2="0" y2="5" stroke="{ERROR_OUTLINE}" stroke-width="1.2" stroke-opacity="0.7"/></pattern>'
        ),
    ]
    for name, color in (("pos", POSITIVE_COLOR), ("neg", NEGATIVE_COLOR)):
        out.append(
            f'<marker id="arrow-{name}" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" '
            f'markerHeight="7" markerUnits="userSpaceOnUse" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
    out.append("</defs>")
    out.append(f'<g id="viewport" data-targets="{targets}">')
    out.append('<g class="frame">')
    for row in layout.rows:
        y = canvas.y(row.y)
        out.append(
            f'<line x1="{_num(canvas.x(0))}" y1="{_num(y)}" x2="{_num(canvas.x(layout.width))}" '
            f'y2="{_num(y)}" stroke="#eeeeee"/>'
        )
        out.append(
            f'<text class="row-name" x="{_num(canvas.x(0) - 8)}" y="{_num(y + 4)}" '
            f'text-anchor="end">{_text(row.name)}</text>'
        )
    if layout.positional:
        for band in layout.bands[1:]:
            out.append(
                f'<line x1="{_num(canvas.x(band.left))}" y1="{_num(canvas.y(layout.height))}" '
                f'x2="{_num(canvas.x(band.left))}" y2="{_num(canvas.y(0))}" stroke="#f0f0f0"/>'
            )
        for band in layout.bands:
            top = canvas.y(layout.token_y)
            spans = "".join(
                f'<tspan x="{_num(canvas.x(band.center))}" dy="{_num(11 if i == 0 else 13)}">{_text(line)}</tspan>'
                for i, line in enumerate(_token_lines(band.token, band.position))
            )
            out.append(
                f'<text class="token" data-position="{_attr(band.position)}" y="{_num(top)}" '
                f'text-anchor="middle">{spans}</text>'
            )
    out.append("</g>")

    # edges in nested tier groups (node tier, then edge tier; see render/shares.py): the
    # sliders hide whole groups (visibility inherits, so hidden wins at any level)
    groups: dict[int, dict[int, list[str]]] = {}
    ordered = sorted(graph.edges(data="weight"), key=lambda e: (abs(e[2]), e[0], e[1]))
    for source, target, weight in ordered:
        start, end = layout.nodes[source], layout.nodes[target]
        path = _edge_path(
            canvas.x(start.x),
            canvas.y(start.y),
            canvas.x(end.x),
            canvas.y(end.y),
            curved=abs(end.row - start.row) != 1,
        )
        sign = "pos" if weight >= 0 else "neg"
        node_part, edge_part = keys.edges[(source, target)]
        groups.setdefault(tier(node_part, NODE_STEPS), {}).setdefault(
            tier(edge_part, EDGE_STEPS), []).append(
            f'<path class="edge {sign}" d="{path}" data-source="{_attr(source)}" data-target="{_attr(target)}" '
            f'data-weight="{_attr(repr(float(weight)))}" data-key="{_key(node_part)}" '
            f'data-ekey="{_key(edge_part)}" stroke="{edge_color(weight)}" '
            f'stroke-width="{_num(edge_width(weight, weight_limit) * 1.1)}" '
            f'stroke-opacity="{edge_alpha(weight, weight_limit):.2f}" marker-end="url(#arrow-{sign})" '
            f'data-strength="{edge_strength(weight, weight_limit):.3f}"/>'
        )
    out.append('<g class="edges">')
    for node_tier in sorted(groups, reverse=True):  # the most influential drawn last, on top
        out.append(f'<g class="tier" data-tier="{node_tier}">')
        for edge_tier in sorted(groups[node_tier], reverse=True):
            out.append(f'<g class="etier" data-etier="{edge_tier}">')
            out.extend(groups[node_tier][edge_tier])
            out.append("</g>")
        out.append("</g>")
    out.append("</g>")

    out.append('<g class="nodes">')
    node_tiers = {node: tier(keys.nodes[node], NODE_STEPS) for node in layout.nodes}
    open_tier = None
    for index, (node, place) in sorted(enumerate(layout.nodes.items()),
                                       key=lambda item: (node_tiers[item[1][0]], item[0])):
        if node_tiers[node] != open_tier:
            out.append(("</g>" if open_tier is not None else "")
                       + f'<g class="tier" data-tier="{node_tiers[node]}">')
            open_tier = node_tiers[node]
        attrs = graph.nodes[node]
        x, y = canvas.x(place.x), canvas.y(place.y)
        data = {
            "id": node,
            "index": index,
            "kind": attrs["kind"],
            "site": attrs.get("site") or "",
            "effect": format_number(attrs.get("effect")),
            "activation": format_number(attrs.get("activation")),
            "label": attrs.get("label") or "",
            "feature": "" if attrs.get("feature") is None else attrs["feature"],
            "key": _key(keys.nodes[node]),
            "x": _num(x),
            "y": _num(y),
            **_card_data(attrs),
        }
        data_attrs = " ".join(f'data-{key}="{_attr(value)}"' for key, value in data.items())
        top = canvas.y(place.label_top)
        spans = "".join(
            f'<tspan x="{_num(x)}" dy="{_num(_FONT_PX * 0.95 if i == 0 else _LINE_PX)}">{_text(line)}</tspan>'
            for i, line in enumerate(lines_of[node])
        )
        out.append(
            f'<g class="node kind-{attrs["kind"]}" {data_attrs} tabindex="0" role="button" '
            f'aria-label="{_attr(node)}">{_shape(attrs["kind"], x, y, effect_hex(attrs.get("effect"), effect_limit))}'
            f'<text class="label" y="{_num(top)}" text-anchor="middle">{spans}</text></g>'
        )
    out.append(("</g>" if open_tier is not None else "") + "</g></g></svg>")
    return "\n".join(out)


def to_html(
    graph: nx.DiGraph,
    path: str | os.PathLike[str] | None = None,
    *,
    dashboards: Mapping[str, str] | None = None,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
    top_tokens: Mapping[str, Iterable[str]] | None = None,
    max_nodes: int = HTML_MAX_NODES,
    max_positions: int = HTML_MAX_POSITIONS,
) -> str:
    """Return (and, with ``path``, atomically write) one self-contained interactive HTML page.

    Args:
        graph: circuit ``networkx.DiGraph`` (schema in docs/graph-format.md).
        path: where to write the page (UTF-8), or None to only return it.
        dashboards: node id -> trusted HTML fragment shown when the node is clicked;
            nodes without one show their attributes and strongest edges. Entries for
            ids not in the graph are ignored.
        title: page heading; default ``"Circuit for <target>"``.
        labels, top_tokens: node annotations, as in :func:`render_circuit`.
        max_nodes, max_positions: larger graphs are refused before the layout
            (``render.limits.check_render_size``; defaults 20,000 and 4,096).
    """
    validate_circuit_graph(graph)
    check_render_size(graph, max_nodes=max_nodes, max_positions=max_positions,
                      renderer="HTML viewer")
    dashboards = dict(dashboards or {})
    for node, fragment in dashboards.items():
        if not isinstance(fragment, str):
            raise ParameterError(
                f"dashboards[{node!r}] is a {type(fragment).__name__}, not an HTML string",
                hint="pass HTML fragments as str",
            )
    heading = (
        title
        if title is not None
        else f"Circuit for {graph.graph.get('target') or 'unnamed target'}"
    )
    lines_of = {
        node: _label_lines(node, graph.nodes[node], labels, top_tokens) for node in graph.nodes
    }
    label_sizes = {node: _text_size(lines, _CHAR_PX, _LINE_PX) for node, lines in lines_of.items()}
    tokens = list(graph.graph.get("prompt_tokens") or [])
    token_sizes = [
        _text_size(_token_lines(t, i), _TOKEN_FONT_PX * 0.61, 13.0) for i, t in enumerate(tokens)
    ]
    layout = (
        layered_layout(graph, label_sizes, token_sizes, _SPEC) if graph.number_of_nodes() else None
    )

    effect_limit = symmetric_limit(a.get("effect") for _, a in graph.nodes(data=True))
    keys = slider_keys(graph)
    svg = (_svg(graph, layout, lines_of, keys) if layout is not None
           else "<p>(empty circuit)</p>")
    start_share = 1.0 if graph.number_of_nodes() <= _FULL_BELOW else 0.8
    ranked_by = ("influence on the target" if keys.by_influence
                 else "|effect| (nodes) and |weight| (edges): the graph has no target")

    sections = []
    for index, node in enumerate(layout.nodes if layout is not None else []):
        body = dashboards[node] if node in dashboards else attribute_table(graph, node)
        sections.append(
            f'<section class="dashboard" id="dash-{index}" data-for="{_attr(node)}" hidden>{body}</section>'
        )

    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_attr(_CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="featcircuits">
<title>{_text(heading)}</title>
<style>
{_viewer_file("viewer.css")}</style>
</head>
<body>
<header>
<h1>{_text(heading)}</h1>
<p class="subtitle">{_text(describe_thresholds(graph))}</p>
<div class="controls">
<span class="zoom"><button type="button" id="zoom-out" title="zoom out (-)">−</button><button type="button" id="zoom-in" title="zoom in (+)">+</button><button type="button" id="fit" title="fit to the window (0)">fit</button></span>
<label>find <input type="search" id="search" placeholder="feature id or label" size="22"></label>
<span id="search-count"></span>
<label title="keep the nodes carrying this share of the influence ({_attr(ranked_by)}); every kept node keeps its path to the target">nodes <input type="range" id="node-share" min="0.05" max="1" step="{1 / NODE_STEPS}" data-steps="{NODE_STEPS}" value="{start_share}"> <output id="node-share-value"></output></label>
<label title="keep the edges carrying this share of the edge influence among the kept nodes">edges <input type="range" id="edge-share" min="0.5" max="1" step="{1 / EDGE_STEPS}" data-steps="{EDGE_STEPS}" value="{1.0 if start_share == 1.0 else 0.98}"> <output id="edge-share-value"></output></label>
<span id="shown-count"></span>
</div>
{legend(effect_limit, str(graph.graph.get("metric") or "metric"))}
</header>
<main>
<div id="diagram">
{svg}
</div>
<aside id="panel" hidden>
<button id="panel-close" type="button" aria-label="close">×</button>
<h2 id="panel-title"></h2>
{"".join(sections)}
</aside>
</main>
<div id="tooltip" role="tooltip" hidden></div>
<script>
{_viewer_file("viewer.js")}</script>
</body>
</html>
"""
    if path is not None:
        atomic_write_text(Path(path), page)
    return page
