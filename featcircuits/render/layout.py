"""Layered layout of a circuit graph, shared by the matplotlib and HTML renderers.

Rows (bottom to top): input/embedding nodes, one row per (layer, site) in forward
order, output nodes. When nodes carry token positions, the x axis is cut into one
band per prompt position (plus an ``all positions`` band for position-free nodes), so
nodes line up under their token. Inside a (row, band) cell the nodes get one slot each,
ordered by the mean x of their neighbours (a few barycentre sweeps, which reduces edge
crossings deterministically). Each node's label hangs below it; labels that would
touch a neighbour's label on the same row are pushed to a lower *level*, and the row
is made tall enough for its levels. The layout is unit-free: the caller passes sizes in
inches (matplotlib) or pixels (SVG). y grows upward.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from featcircuits.render.labels import RowKey, row_key, row_name

ALL_POSITIONS = None  # band key of nodes without a position in a positional graph


@dataclass(frozen=True)
class LayoutSpec:
    """Sizes, in the caller's unit."""

    node_radius: float
    slot_width: float  # horizontal room per node inside a band
    label_gap: float  # vertical gap node -> label and between label levels
    label_hgap: float  # minimum horizontal gap between two labels on one level
    row_gap: float  # free vertical space between a row's label block and the row below's nodes
    band_pad: float  # extra width around a token's text in its band
    token_gap: float  # vertical gap between the lowest labels and the token strip
    #: wrap crowded (row, band) cells onto extra lines so that width / height stays below
    #: this (estimated before labels are stacked); None: one line per row
    max_aspect: float | None = None


@dataclass(frozen=True)
class NodePlace:
    x: float
    y: float
    row: int
    band: int
    label_x: float
    label_top: float  # y of the label's top edge
    label_width: float
    label_height: float
    level: int


@dataclass(frozen=True)
class Row:
    key: RowKey
    name: str
    y: float


@dataclass(frozen=True)
class Band:
    position: (
        int | None
    )  # None: the "all positions" band (or the single band of a non-positional graph)
    left: float
    right: float
    token: str | None

    @property
    def center(self) -> float:
        return (self.left + self.right) / 2


@dataclass(frozen=True)
class CircuitLayout:
    nodes: dict[str, NodePlace]
    rows: list[Row]
    bands: list[Band]
    positional: bool
    token_y: float  # y of the top of the token strip
    width: float
    height: float


def natural_key(text: str) -> tuple:
    """Sort ``'f9'`` before ``'f117'``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
    )


def _band_of(attrs: dict, positional: bool, last_position: int) -> int | None:
    if not positional:
        return ALL_POSITIONS
    position = attrs.get("position")
    if position is None and attrs["kind"] == "output":
        return last_position  # the metric is read at the last token
    return position


def _wrap_cells(row_keys, cells, n_bands, tokens, token_sizes, label_sizes, spec):
    """Split rows whose cells hold more than ``wrap`` nodes into lines of at most ``wrap``
    (the largest ``wrap`` whose estimated width / height is at most ``spec.max_aspect``).
    Returns the new row keys, row names (continuation lines unnamed) and cells."""
    n_rows = len(row_keys)
    sizes = {key: len(nodes) for key, nodes in cells.items()}
    largest = max(sizes.values(), default=1)
    label_h = max((h for _, h in label_sizes.values()), default=0.0)
    row_unit = 2 * spec.node_radius + spec.row_gap + spec.label_gap + 1.5 * label_h

    def floor_width(b: int) -> float:
        return token_sizes[b][0] + spec.band_pad if b < min(len(tokens), len(token_sizes)) \
            else 0.6 * spec.slot_width

    def aspect(wrap: int) -> float:
        width = sum(max(max((min(sizes.get((r, b), 0), wrap) for r in range(n_rows)),
                            default=0) * spec.slot_width, floor_width(b))
                    for b in range(n_bands))
        lines = sum(max(-(-sizes.get((r, b), 0) // wrap) for b in range(n_bands)) or 1
                    for r in range(n_rows))
        return width / (lines * row_unit)

    wrap = largest
    while wrap > 1 and aspect(wrap) > spec.max_aspect:
        wrap -= 1
    new_keys, new_names, new_cells = [], [], defaultdict(list)
    for r, key in enumerate(row_keys):
        n_lines = max(-(-sizes.get((r, b), 0) // wrap) for b in range(n_bands)) or 1
        base = len(new_keys)
        for line in range(n_lines):
            new_keys.append(key)
            new_names.append(row_name(key) if line == 0 else "")
        for b in range(n_bands):
            for i, node in enumerate(cells.get((r, b), [])):
                new_cells[(base + i // wrap, b)].append(node)
    return new_keys, new_names, new_cells


def layered_layout(
    graph: nx.DiGraph,
    label_sizes: Mapping[str, tuple[float, float]],
    token_sizes: Sequence[tuple[float, float]],
    spec: LayoutSpec,
) -> CircuitLayout:
    """Place every node of ``graph``.

    Args:
        graph: a validated circuit graph.
        label_sizes: node -> (width, height) of its label text.
        token_sizes: (width, height) of each prompt token's text, index = position.
        spec: sizes in the same unit as ``label_sizes``.
    """
    attrs_of = {node: graph.nodes[node] for node in graph.nodes}
    tokens: list[str] = list(graph.graph.get("prompt_tokens") or [])
    positional = any(a.get("position") is not None for a in attrs_of.values())
    max_position = max(
        (a["position"] for a in attrs_of.values() if a.get("position") is not None), default=-1
    )
    n_positions = max(len(tokens), max_position + 1) if positional else 0
    last_position = n_positions - 1

    row_keys = sorted({row_key(a) for a in attrs_of.values()})
    row_index = {key: i for i, key in enumerate(row_keys)}
    band_keys: list[int | None] = list(range(n_positions)) if positional else [ALL_POSITIONS]
    node_band = {node: _band_of(a, positional, last_position) for node, a in attrs_of.items()}
    if positional and any(b is ALL_POSITIONS for b in node_band.values()):
        band_keys.append(ALL_POSITIONS)
    band_index = {key: i for i, key in enumerate(band_keys)}

    cells: dict[tuple[int, int], list[str]] = defaultdict(list)
    for node in sorted(attrs_of, key=natural_key):
        cells[(row_index[row_key(attrs_of[node])], band_index[node_band[node]])].append(node)
    row_names = [row_name(key) for key in row_keys]
    if spec.max_aspect is not None:
        row_keys, row_names, cells = _wrap_cells(row_keys, cells, len(band_keys), tokens,
                                                 token_sizes, label_sizes, spec)
    max_in_band = [
        max((len(cells[(r, b)]) for r in range(len(row_keys))), default=0)
        for b in range(len(band_keys))
    ]

    # --- horizontal: band widths, then slot order by barycentre sweeps
    bands: list[Band] = []
    cursor = 0.0
    for b, key in enumerate(band_keys):
        token = tokens[key] if isinstance(key, int) and key < len(tokens) else None
        token_width = (
            token_sizes[key][0] if isinstance(key, int) and key < len(token_sizes) else 0.0
        )
        occupied = max_in_band[b] * spec.slot_width
        width = max(
            occupied,
            token_width + spec.band_pad,
            spec.slot_width * (1.0 if max_in_band[b] else 0.6),
        )
        bands.append(Band(position=key, left=cursor, right=cursor + width, token=token))
        cursor += width
    content_right = cursor

    x_of: dict[str, float] = {}

    def place_row(r: int, neighbours_of) -> None:
        for b in range(len(band_keys)):
            members = cells.get((r, b))
            if not members:
                continue
            base = {node: i for i, node in enumerate(members)}

            def order_key(node: str, b: int = b, base: dict[str, int] = base) -> tuple[float, int]:
                xs = [x_of[n] for n in neighbours_of(node) if n in x_of and n != node]
                return (sum(xs) / len(xs) if xs else bands[b].center, base[node])

            if x_of:
                members.sort(key=order_key)
            k = len(members)
            for i, node in enumerate(members):
                x_of[node] = bands[b].center + (i - (k - 1) / 2) * spec.slot_width

    def both(node: str):
        return [*graph.predecessors(node), *graph.successors(node)]

    for r in range(len(row_keys)):  # upward: order by predecessors (nothing placed yet for row 0)
        place_row(r, graph.predecessors)
    for r in reversed(range(len(row_keys))):  # downward: order by all placed neighbours
        place_row(r, both)
    for r in range(len(row_keys)):
        place_row(r, both)

    # --- vertical: label levels per row, then row heights bottom-up
    level_of: dict[str, int] = {}
    row_label_height: list[float] = []
    row_levels: list[int] = []
    for r in range(len(row_keys)):
        members = sorted(
            (node for (rr, _), nodes in cells.items() if rr == r for node in nodes),
            key=lambda n: (x_of[n], natural_key(n)),
        )
        right_edges: list[float] = []
        for node in members:
            width = label_sizes[node][0]
            left = x_of[node] - width / 2
            for level, right in enumerate(right_edges):
                if right + spec.label_hgap <= left:
                    right_edges[level] = left + width
                    level_of[node] = level
                    break
            else:
                level_of[node] = len(right_edges)
                right_edges.append(left + width)
        row_label_height.append(max((label_sizes[n][1] for n in members), default=0.0))
        row_levels.append(len(right_edges))

    has_tokens = positional and any(band.token is not None for band in bands)
    token_height = max((h for _, h in token_sizes), default=0.0) if has_tokens else 0.0
    y_cursor = token_height + (spec.token_gap if has_tokens else 0.0)
    token_y = token_height
    rows: list[Row] = []
    row_y: list[float] = []
    for r, key in enumerate(row_keys):
        depth = row_levels[r] * (row_label_height[r] + spec.label_gap)
        y = y_cursor + depth + spec.node_radius
        rows.append(Row(key=key, name=row_names[r], y=y))
        row_y.append(y)
        y_cursor = y + spec.node_radius + spec.row_gap
    height = y_cursor - spec.row_gap + spec.node_radius

    places: dict[str, NodePlace] = {}
    for (r, b), members in cells.items():
        for node in members:
            width, label_height = label_sizes[node]
            level = level_of[node]
            top = (
                row_y[r]
                - spec.node_radius
                - spec.label_gap
                - level * (row_label_height[r] + spec.label_gap)
            )
            places[node] = NodePlace(
                x=x_of[node],
                y=row_y[r],
                row=r,
                band=b,
                label_x=x_of[node],
                label_top=top,
                label_width=width,
                label_height=label_height,
                level=level,
            )

    # shift right so no label sticks out on the left of x = 0
    overhang = max([0.0, *(-(p.label_x - p.label_width / 2) for p in places.values())])
    if overhang > 0:
        places = {
            n: NodePlace(
                p.x + overhang,
                p.y,
                p.row,
                p.band,
                p.label_x + overhang,
                p.label_top,
                p.label_width,
                p.label_height,
                p.level,
            )
            for n, p in places.items()
        }
        bands = [Band(b.position, b.left + overhang, b.right + overhang, b.token) for b in bands]
    width = max(
        [content_right + overhang, *(p.label_x + p.label_width / 2 for p in places.values())]
    )
    return CircuitLayout(
        nodes=dict(sorted(places.items(), key=lambda item: natural_key(item[0]))),
        rows=rows,
        bands=bands,
        positional=positional,
        token_y=token_y,
        width=width,
        height=height,
    )
