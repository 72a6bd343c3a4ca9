"""Size limits of the renderers: a graph too large to draw is refused before any layout,
figure or page is built, with a message naming the keyword (and CLI flag) that raises the
limit.

Without them a 100,000-node graph took 856 s and 9 GB to become a PNG, 200,000 prompt
tokens ended in matplotlib's "image size too large", and a node at position 2**62 asked
the layout for a column per position (``MemoryError``; positions are also capped at
``graph.schema.MAX_POSITION`` by the schema). Node and position counts are what the layouts
spend time and memory on (one box per node, one column per position); edges are bounded at
``EDGES_PER_NODE`` times the node limit.
"""

from __future__ import annotations

import networkx as nx

from featcircuits.errors import ParameterError

__all__ = ["DIAGRAM_MAX_NODES", "DIAGRAM_MAX_POSITIONS", "EDGES_PER_NODE", "HTML_MAX_NODES",
           "HTML_MAX_POSITIONS", "check_render_size"]

#: matplotlib diagrams (PNG/SVG/PDF): most nodes and token positions (columns)
DIAGRAM_MAX_NODES = 2_000
DIAGRAM_MAX_POSITIONS = 512
#: the interactive HTML viewer (pans and zooms, so it takes more)
HTML_MAX_NODES = 20_000
HTML_MAX_POSITIONS = 4_096
#: edges allowed per allowed node
EDGES_PER_NODE = 20


def _limit(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_render_size(graph: nx.DiGraph, *, max_nodes: int, max_positions: int,
                      renderer: str) -> None:
    """``ParameterError`` when ``graph`` has more than ``max_nodes`` nodes, more than
    ``EDGES_PER_NODE * max_nodes`` edges, or spans more than ``max_positions`` token
    positions (``prompt_tokens`` entries, or one past the largest node ``position``).

    The message names ``renderer`` and how to raise the limit: the keyword (``max_nodes=``,
    ``max_positions=``) and the CLI flag (``--max-nodes``, ``--max-positions``)."""
    max_nodes = _limit(max_nodes, "max_nodes")
    max_positions = _limit(max_positions, "max_positions")
    prune = "or draw a pruned graph (featcircuits.graph.threshold / top_k_edges)"
    n_nodes = graph.number_of_nodes()
    if n_nodes > max_nodes:
        raise ParameterError(
            f"the graph has {n_nodes} nodes, more than the {renderer} limit of {max_nodes}",
            hint=f"raise it with max_nodes={n_nodes} (--max-nodes {n_nodes} on the "
            f"command line), {prune}")
    n_edges = graph.number_of_edges()
    if n_edges > EDGES_PER_NODE * max_nodes:
        wanted = -(-n_edges // EDGES_PER_NODE)
        raise ParameterError(
            f"the graph has {n_edges} edges, more than the {renderer} limit of "
            f"{EDGES_PER_NODE * max_nodes} ({EDGES_PER_NODE} x max_nodes={max_nodes})",
            hint=f"raise it with max_nodes={wanted} (--max-nodes {wanted}), {prune}")
    tokens = graph.graph.get("prompt_tokens")
    n_tokens = len(tokens) if isinstance(tokens, (list, tuple)) else 0
    positions = [attrs.get("position") for _, attrs in graph.nodes(data=True)]
    last = max((p for p in positions if isinstance(p, int) and not isinstance(p, bool)),
               default=-1)
    span = max(n_tokens, last + 1)
    if span > max_positions:
        what = (f"{n_tokens} prompt tokens" if n_tokens >= last + 1
                else f"a node at position {last}")
        raise ParameterError(
            f"the graph spans {span} token positions ({what}), more than the {renderer} "
            f"limit of {max_positions}",
            hint=f"raise it with max_positions={span} (--max-positions {span} on "
            "the command line) if that many columns are wanted, or draw a graph over a "
            "shorter prompt")
