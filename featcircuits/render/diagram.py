"""Static circuit diagrams with matplotlib (Agg; never ``plt.show``).

``render_circuit(graph)`` draws the layered layout of :mod:`featcircuits.render.layout`:
embeddings at the bottom, one row per (layer, site), outputs on top; nodes under their
prompt token when they carry positions. Node fill = signed ``effect`` on a diverging
RdBu scale centred at 0 (colourbar); error nodes are hatched squares with a dashed grey
outline, inputs diamonds, outputs hexagons; edge colour = sign of ``weight`` (blue +,
red −), width and opacity ∝ ``|weight|``.

Every drawn object carries a ``gid`` (``node:<id>``, ``edge:<source>-><target>``,
``label:<id>``), so tests and users can find the artist of a given node or edge.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import matplotlib
import networkx as nx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, Patch, Rectangle, RegularPolygon
from matplotlib.text import Text

from featcircuits.errors import GraphError, OutputError, ParameterError
from featcircuits.graph.influence import influence
from featcircuits.graph.schema import target_nodes, validate_circuit_graph
from featcircuits.render.labels import (
    annotation,
    describe_thresholds,
    display_token,
    short_id,
    truncate,
)
from featcircuits.render.layout import ALL_POSITIONS, CircuitLayout, LayoutSpec, layered_layout
from featcircuits.render.limits import DIAGRAM_MAX_NODES, DIAGRAM_MAX_POSITIONS, check_render_size
from featcircuits.render.style import (
    ERROR_OUTLINE,
    NEGATIVE_COLOR,
    NODE_OUTLINE,
    POSITIVE_COLOR,
    edge_alpha,
    edge_color,
    edge_strength,
    edge_width,
    effect_cmap,
    effect_norm,
    effect_rgba,
    symmetric_limit,
)
from featcircuits.writes import atomic_path

SAVE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
# Metadata that would otherwise differ between two saves of the same figure.
_STABLE_METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}

_MEASURE_DPI = 100.0
_NODE_RADIUS = 0.11  # inches
#: crowded cells wrap onto extra lines until the node area is at most this wide per unit
#: of height (the legend and title bring the whole figure to about 2:1)
_LAYOUT_ASPECT = 1.5
_LEFT_PAD = 0.2
_LEGEND_WIDTH = 2.3
_TITLE_HEIGHT = 0.75
_BOTTOM_PAD = 0.2


def _label_text(
    node: str, attrs: dict, id_style: str, labels, top_tokens, max_annotation_chars: int
) -> str:
    head = node if id_style == "full" else short_id(node, attrs)
    note = truncate(annotation(node, attrs, labels, top_tokens), max_annotation_chars)
    if note.replace("_", " ").lower() == head.replace("_", " ").lower():
        note = ""
    return head if not note else f"{head}\n{note}"


def _text_kwargs(font_size: float) -> dict:
    return {"fontsize": font_size, "linespacing": 1.1, "multialignment": "center"}


def _measure(texts: Mapping[str, str], font_size: float, **extra) -> dict[str, tuple[float, float]]:
    """(width, height) in inches of each text rendered at ``font_size``."""
    scratch = Figure(dpi=_MEASURE_DPI)
    renderer = FigureCanvasAgg(scratch).get_renderer()
    sizes = {}
    for key, text in texts.items():
        artist = Text(0, 0, text, figure=scratch, **_text_kwargs(font_size), **extra)
        box = artist.get_window_extent(renderer)
        sizes[key] = (box.width / _MEASURE_DPI, box.height / _MEASURE_DPI)
    return sizes


def _token_text(token: str | None, position: int | None) -> str:
    if position is ALL_POSITIONS:
        return "all\npositions"
    shown = truncate(display_token(token), 14) if token is not None else "·"
    return f"{shown}\n{position}"


def _node_patch(kind: str, x: float, y: float, radius: float, face, gid: str):
    if kind == "error":
        side = 1.7 * radius
        return Rectangle(
            (x - side / 2, y - side / 2),
            side,
            side,
            facecolor=face,
            edgecolor=ERROR_OUTLINE,
            linewidth=1.2,
            linestyle=(0, (2.0, 1.2)),
            hatch="////",
            gid=gid,
            zorder=3,
        )
    if kind == "input":
        return RegularPolygon(
            (x, y),
            numVertices=4,
            radius=1.25 * radius,
            facecolor=face,
            edgecolor=NODE_OUTLINE,
            linewidth=0.9,
            gid=gid,
            zorder=3,
        )
    if kind == "output":
        return RegularPolygon(
            (x, y),
            numVertices=6,
            radius=1.3 * radius,
            facecolor=face,
            edgecolor=NODE_OUTLINE,
            linewidth=1.2,
            gid=gid,
            zorder=3,
        )
    return Circle(
        (x, y), radius, facecolor=face, edgecolor=NODE_OUTLINE, linewidth=0.9, gid=gid, zorder=3
    )


def _legend_handles() -> list:
    return [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="none",
            markerfacecolor="white",
            markeredgecolor=NODE_OUTLINE,
            markersize=8,
            label="feature",
        ),
        Patch(
            facecolor="white",
            edgecolor=ERROR_OUTLINE,
            hatch="////",
            linestyle="--",
            label="error (SAE residual)",
        ),
        Line2D(
            [],
            [],
            marker="D",
            linestyle="none",
            markerfacecolor="white",
            markeredgecolor=NODE_OUTLINE,
            markersize=7,
            label="input / embedding",
        ),
        Line2D(
            [],
            [],
            marker="h",
            linestyle="none",
            markerfacecolor="white",
            markeredgecolor=NODE_OUTLINE,
            markersize=9,
            label="output (metric)",
        ),
        Line2D([], [], color=POSITIVE_COLOR, linewidth=2.5, label="edge, weight > 0"),
        Line2D([], [], color=NEGATIVE_COLOR, linewidth=2.5, label="edge, weight < 0"),
    ]


def _draw_frame(ax, graph: nx.DiGraph, layout: CircuitLayout, font_size: float) -> None:
    """Row names, row guide lines, position bands and the prompt tokens."""
    for row in layout.rows:
        ax.plot([0, layout.width], [row.y, row.y], color="#eeeeee", linewidth=0.8, zorder=0)
        ax.text(
            -_LEFT_PAD / 2,
            row.y,
            row.name,
            ha="right",
            va="center",
            fontsize=font_size + 1,
            color="#333333",
            gid=f"row:{row.name}",
        )
    if not layout.positional:
        return
    for band in layout.bands[1:]:
        ax.plot(
            [band.left, band.left], [0, layout.height], color="#f0f0f0", linewidth=0.8, zorder=0
        )
    ax.text(
        -_LEFT_PAD / 2,
        layout.token_y,
        "token\nposition",
        ha="right",
        va="top",
        color="#666666",
        gid="token-heading",
        **_text_kwargs(font_size + 0.5),
    )
    for band in layout.bands:
        ax.text(
            band.center,
            layout.token_y,
            _token_text(band.token, band.position),
            ha="center",
            va="top",
            color="#222222",
            gid=f"token:{band.position}",
            **_text_kwargs(font_size + 0.5),
        )


def edge_strengths(graph: nx.DiGraph) -> dict[tuple[str, str], float]:
    """What edges are drawn by: their influence on the targets
    (``featcircuits.graph.influence``), or ``|weight|`` for a graph without targets."""
    try:
        return dict(influence(graph).edges) if target_nodes(graph) else {}
    except GraphError:  # a cycle: no influence, fall back to weights
        return {}


def _draw_edges(ax, graph: nx.DiGraph, layout: CircuitLayout, radius_points: float) -> None:
    strength = edge_strengths(graph) or {(u, v): abs(w) for u, v, w in
                                         graph.edges(data="weight")}
    limit = symmetric_limit(strength.values())
    # weakest first, so strong edges are drawn on top
    ordered = sorted(graph.edges(data="weight"), key=lambda e: (strength[e[:2]], e[0], e[1]))
    for source, target, weight in ordered:
        start, end = layout.nodes[source], layout.nodes[target]
        adjacent = abs(end.row - start.row) == 1
        rad = 0.0 if adjacent else (0.25 if end.x >= start.x else -0.25)
        value = strength[(source, target)]
        ax.add_patch(
            FancyArrowPatch(
                (start.x, start.y),
                (end.x, end.y),
                arrowstyle="-|>",
                mutation_scale=9,
                shrinkA=radius_points,
                shrinkB=radius_points + 1.5,
                connectionstyle=f"arc3,rad={rad}",
                color=edge_color(weight),
                alpha=edge_alpha(value, limit),
                linewidth=edge_width(value, limit),
                zorder=1 + edge_strength(value, limit),
                gid=f"edge:{source}->{target}",
            )
        )


def render_circuit(
    graph: nx.DiGraph,
    *,
    ax=None,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
    top_tokens: Mapping[str, Iterable[str]] | None = None,
    path: str | os.PathLike[str] | None = None,
    font_size: float = 8.0,
    id_style: Literal["short", "full"] = "short",
    max_annotation_chars: int = 22,
    dpi: float = 150.0,
    max_nodes: int = DIAGRAM_MAX_NODES,
    max_positions: int = DIAGRAM_MAX_POSITIONS,
) -> Figure:
    """Draw a circuit graph as a layered diagram and return the matplotlib Figure.

    Args:
        graph: circuit ``networkx.DiGraph`` (schema in docs/graph-format.md).
        ax: draw into this Axes instead of a new, automatically sized figure.
        title: first title line; default ``"Circuit for <target>"``. A second line
            always names metric, method, thresholds, model and size.
        labels: node -> annotation text (wins over ``top_tokens`` and the ``label`` attr).
        top_tokens: node -> tokens that most activate it; the first three are shown.
        path: save to ``.png`` / ``.svg`` / ``.pdf`` (chosen by extension), atomically.
        font_size: label font size in points.
        id_style: ``"short"`` drops the site prefix (the row names it) and ``@pos``
            (the column names it); ``"full"`` prints whole node ids.
        max_annotation_chars: annotations are cut to this length.
        dpi: resolution of a saved PNG.
        max_nodes, max_positions: larger graphs (more nodes, more than 20 edges per allowed
            node, or more token positions) are refused before drawing
            (``render.limits.check_render_size``; defaults 2,000 and 512).
    """
    validate_circuit_graph(graph)
    check_render_size(graph, max_nodes=max_nodes, max_positions=max_positions,
                      renderer="diagram")
    if id_style not in ("short", "full"):
        raise ParameterError(f"id_style must be 'short' or 'full', got {id_style!r}")
    if not font_size > 0:
        raise ParameterError(f"font_size must be > 0, got {font_size!r}")
    if path is not None and Path(path).suffix.lower() not in SAVE_FORMATS:
        raise OutputError(
            f"cannot save a diagram as {str(path)!r}: unknown extension {Path(path).suffix!r}",
            hint="use a path ending in .png, .svg or .pdf",
        )
    if graph.number_of_nodes() == 0:
        raise ParameterError(
            "the circuit graph has no nodes; there is nothing to draw",
            hint="check the thresholds used to build the circuit",
        )

    label_texts = {
        node: _label_text(
            node, graph.nodes[node], id_style, labels, top_tokens, max_annotation_chars
        )
        for node in graph.nodes
    }
    label_sizes = _measure(label_texts, font_size)
    tokens = list(graph.graph.get("prompt_tokens") or [])
    token_sizes = list(
        _measure(
            {str(i): _token_text(t, i) for i, t in enumerate(tokens)}, font_size + 0.5
        ).values()
    )
    row_names = {
        "embed",
        "output",
        "position",
        *(str(a.get("site") or "") for _, a in graph.nodes(data=True)),
    }
    row_name_width = max(w for w, _ in _measure({n: n for n in row_names}, font_size + 1).values())
    spec = LayoutSpec(
        node_radius=_NODE_RADIUS,
        slot_width=max(0.42, 2.6 * _NODE_RADIUS),
        label_gap=0.05,
        label_hgap=0.08,
        row_gap=0.32,
        band_pad=0.12,
        token_gap=0.14,
        max_aspect=_LAYOUT_ASPECT,
    )
    layout = layered_layout(graph, label_sizes, token_sizes, spec)

    heading = (
        title
        if title is not None
        else f"Circuit for {graph.graph.get('target') or 'unnamed target'}"
    )
    subtitle = describe_thresholds(graph)
    title_width = max(
        _measure({"t": heading}, 12, fontweight="bold")["t"][0],
        _measure({"s": subtitle}, 8.5)["s"][0],
    )
    metric = graph.graph.get("metric") or "metric"
    # right-hand panel: legend on top, colour bar (with its title) below it
    legend_height = len(_legend_handles()) * (font_size + 1) * 1.9 / 72
    bar_title_height = 2 * (font_size + 1) * 1.3 / 72
    bar_top = layout.height - legend_height - 0.3 - bar_title_height
    bar_height = min(2.2, max(bar_top - 0.1, 1.2))

    left = row_name_width + _LEFT_PAD
    x_min = -left
    x_max = max(layout.width + _LEGEND_WIDTH, x_min + 0.15 + title_width + 0.25)
    y_min = min(-_BOTTOM_PAD, bar_top - bar_height - 0.2)
    title_height = _TITLE_HEIGHT + 0.17 * subtitle.count("\n")
    y_max = layout.height + title_height
    if ax is None:
        fig = Figure(figsize=(x_max - x_min, y_max - y_min), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1))
        owns_figure = True
    else:
        fig = ax.figure
        owns_figure = False
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_aspect("equal", adjustable="box" if owns_figure else "datalim")
    ax.set_axis_off()

    _draw_frame(ax, graph, layout, font_size)
    _draw_edges(ax, graph, layout, radius_points=_NODE_RADIUS * 72 * 1.15)

    effect_limit = symmetric_limit(a.get("effect") for _, a in graph.nodes(data=True))
    for node, place in layout.nodes.items():
        attrs = graph.nodes[node]
        face = effect_rgba(attrs.get("effect"), effect_limit)
        ax.add_patch(
            _node_patch(attrs["kind"], place.x, place.y, _NODE_RADIUS, face, gid=f"node:{node}")
        )
        ax.text(
            place.label_x,
            place.label_top,
            label_texts[node],
            ha="center",
            va="top",
            color="#111111",
            zorder=4,
            gid=f"label:{node}",
            bbox={
                "boxstyle": "square,pad=0.1",
                "facecolor": "white",
                "edgecolor": "none",
                "alpha": 0.85,
            },
            **_text_kwargs(font_size),
        )

    ax.text(
        x_min + 0.15,
        layout.height + title_height - 0.12,
        heading,
        ha="left",
        va="top",
        fontsize=12,
        fontweight="bold",
        gid="title",
    )
    ax.text(
        x_min + 0.15,
        layout.height + title_height - 0.42,
        subtitle,
        ha="left",
        va="top",
        fontsize=8.5,
        color="#333333",
        gid="subtitle",
    )

    legend_x = layout.width + 0.25
    legend = ax.legend(
        handles=_legend_handles(),
        loc="upper left",
        bbox_to_anchor=(legend_x, layout.height),
        bbox_transform=ax.transData,
        fontsize=font_size + 1,
        frameon=False,
        borderaxespad=0,
    )
    legend.set_gid("legend")
    mappable = ScalarMappable(norm=effect_norm(effect_limit), cmap=effect_cmap())
    if owns_figure:
        width_in, height_in = x_max - x_min, y_max - y_min
        cax = fig.add_axes(
            (
                (legend_x + 0.05 - x_min) / width_in,
                (bar_top - bar_height - y_min) / height_in,
                0.14 / width_in,
                bar_height / height_in,
            )
        )
        colorbar = fig.colorbar(mappable, cax=cax)
    else:
        colorbar = fig.colorbar(mappable, ax=ax, shrink=0.5)
    metric_text = textwrap.fill(f"on {metric}", width=24, break_long_words=True)
    colorbar.ax.set_title(f"node effect\n{metric_text}", fontsize=font_size + 1, loc="left",
                          pad=6)
    colorbar.ax.tick_params(labelsize=font_size)
    colorbar.ax.set_gid("colorbar")

    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float = 150.0) -> Path:
    """Save ``fig`` to ``path`` atomically, format by extension, with reproducible bytes."""
    target = Path(path)
    fmt = SAVE_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise OutputError(
            f"cannot save a figure as {str(target)!r}: unknown extension {target.suffix!r}",
            hint="use a path ending in .png, .svg or .pdf",
        )
    if fig.canvas is None or not hasattr(fig.canvas, "print_figure"):
        FigureCanvasAgg(fig)
    with (
        matplotlib.rc_context({"svg.hashsalt": "featcircuits", "svg.fonttype": "path"}),
        atomic_path(target) as tmp,
    ):
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_STABLE_METADATA[fmt], facecolor="white")
    return target
