"""Synthetic circuit graphs for trying the renderers (and for their tests).

The numbers are invented, not measured on any model: these graphs only exercise the
schema of docs/graph-format.md.
"""

from __future__ import annotations

import random

import networkx as nx

from featcircuits.errors import ParameterError

IOI_TOKENS = [
    "When",
    " Mary",
    " and",
    " John",
    " went",
    " to",
    " the",
    " store",
    ",",
    " John",
    " gave",
    " a",
    " drink",
    " to",
]

_DESCRIPTIONS = [
    "names",
    "Mary",
    "John",
    "subject",
    "plural nouns",
    "duplicate token",
    "induction",
    "prepositions",
    "verbs of giving",
    "end of clause",
    "capitalised words",
    "indirect object",
    "negation",
    "numbers",
    "punctuation",
    "determiners",
    "past tense",
    "locations",
]


def _add_node(graph: nx.DiGraph, node: str, **attrs) -> None:
    defaults = {
        "site": None,
        "feature": None,
        "position": None,
        "activation": None,
        "effect": None,
        "label": "",
    }
    graph.add_node(node, **{**defaults, **attrs})


def example_circuit() -> nx.DiGraph:
    """A small hand-made, IOI-shaped circuit (13 nodes, 15 edges) with invented numbers."""
    graph = nx.DiGraph(
        format_version=1,
        target="IOI: ' Mary' vs ' John'",
        metric="logit_diff",
        tau=0.05,
        model="synthetic-4-layer",
        prompt_tokens=list(IOI_TOKENS),
        method="attribution",
    )
    for position in (1, 3, 9):
        _add_node(
            graph,
            f"input@{position}",
            kind="input",
            site="embed",
            layer=-1,
            position=position,
            effect=0.3 if position == 1 else -0.15,
            label=IOI_TOKENS[position].strip(),
        )
    features = [
        ("resid_out.0/301@1", 0, 301, 1, 2.1, 0.9, "Mary (name)"),
        ("resid_out.0/117@3", 0, 117, 3, 1.8, -0.4, "John (name)"),
        ("resid_out.0/117@9", 0, 117, 9, 1.7, -0.7, "John (name)"),
        ("resid_out.1/88@9", 1, 88, 9, 3.2, -0.8, "duplicate token"),
        ("resid_out.2/17@13", 2, 17, 13, 2.6, 1.2, "S-inhibition"),
        ("resid_out.2/240@13", 2, 240, 13, 0.9, 0.35, "'to' before a name"),
        ("resid_out.3/5@13", 3, 5, 13, 4.0, 1.9, "Mary (IO mover)"),
    ]
    for node, layer, feature, position, activation, effect, label in features:
        _add_node(
            graph,
            node,
            kind="feature",
            site=f"resid_out.{layer}",
            layer=layer,
            feature=feature,
            position=position,
            activation=activation,
            effect=effect,
            label=label,
        )
    _add_node(
        graph,
        "resid_out.1/error@9",
        kind="error",
        site="resid_out.1",
        layer=1,
        position=9,
        effect=0.1,
    )
    _add_node(
        graph,
        "resid_out.3/error@13",
        kind="error",
        site="resid_out.3",
        layer=3,
        position=13,
        effect=0.25,
    )
    _add_node(
        graph,
        "output/logit_diff",
        kind="output",
        site=None,
        layer=4,
        effect=2.4,
        label="logit diff",
    )
    edges = [
        ("input@1", "resid_out.0/301@1", 0.9),
        ("input@3", "resid_out.0/117@3", 0.8),
        ("input@9", "resid_out.0/117@9", 0.85),
        ("resid_out.0/117@3", "resid_out.1/88@9", 0.6),
        ("resid_out.0/117@9", "resid_out.1/88@9", 0.7),
        ("resid_out.0/117@9", "resid_out.1/error@9", 0.1),
        ("resid_out.1/88@9", "resid_out.2/17@13", 0.75),
        ("resid_out.1/error@9", "resid_out.2/17@13", 0.08),
        ("resid_out.0/301@1", "resid_out.2/240@13", 0.3),
        ("resid_out.2/17@13", "resid_out.3/5@13", -0.55),
        ("resid_out.0/301@1", "resid_out.3/5@13", 0.65),
        ("resid_out.2/240@13", "resid_out.3/5@13", 0.2),
        ("resid_out.3/5@13", "output/logit_diff", 1.9),
        ("resid_out.3/error@13", "output/logit_diff", 0.25),
        ("resid_out.2/17@13", "output/logit_diff", -0.4),
    ]
    for source, target, weight in edges:
        graph.add_edge(source, target, weight=weight, method="attribution")
    return graph


def random_layered_circuit(
    n_nodes: int = 50,
    n_edges: int = 150,
    *,
    n_layers: int = 4,
    sites: tuple[str, ...] = ("mlp_out", "resid_out"),
    n_positions: int = 8,
    error_fraction: float = 0.12,
    seed: int = 0,
) -> nx.DiGraph:
    """A seeded random circuit: inputs, features/errors on ``n_layers`` x ``sites`` rows, one output.

    Edges only go upward (at most two rows) and forward in position, like real circuits.
    """
    n_inputs = max(1, n_positions // 2)
    if n_nodes < n_inputs + 2:
        raise ParameterError(f"n_nodes={n_nodes} is too small; need at least {n_inputs + 2}")
    rng = random.Random(seed)
    tokens = [f" tok{i}" for i in range(n_positions)]
    graph = nx.DiGraph(
        format_version=1,
        target=f"random circuit (seed {seed})",
        metric="logit_diff",
        tau=0.01,
        model="synthetic",
        prompt_tokens=tokens,
        method="hybrid",
    )
    row_of: dict[str, int] = {}
    input_positions = sorted(rng.sample(range(n_positions), n_inputs))
    for position in input_positions:
        node = f"input@{position}"
        _add_node(
            graph,
            node,
            kind="input",
            site="embed",
            layer=-1,
            position=position,
            effect=round(rng.uniform(-1, 1), 3),
            label=tokens[position].strip(),
        )
        row_of[node] = 0
    rows = [(layer, site) for layer in range(n_layers) for site in sites]
    n_middle = n_nodes - n_inputs - 1
    while graph.number_of_nodes() < n_inputs + n_middle:
        r = rng.randrange(len(rows))
        layer, site_kind = rows[r]
        site = f"{site_kind}.{layer}"
        position = rng.randrange(n_positions)
        if rng.random() < error_fraction:
            node, kind, feature, label = f"{site}/error@{position}", "error", None, ""
        else:
            feature = rng.randrange(4096)
            node, kind, label = f"{site}/{feature}@{position}", "feature", rng.choice(_DESCRIPTIONS)
        if node in graph:
            continue
        _add_node(
            graph,
            node,
            kind=kind,
            site=site,
            layer=layer,
            feature=feature,
            position=position,
            activation=None if kind == "error" else round(rng.uniform(0.1, 5), 3),
            effect=round(rng.gauss(0, 1), 3),
            label=label,
        )
        row_of[node] = r + 1
    output = "output/logit_diff"
    _add_node(
        graph,
        output,
        kind="output",
        site=None,
        layer=n_layers,
        effect=round(rng.uniform(1, 3), 3),
        label="logit diff",
    )
    row_of[output] = len(rows) + 1

    def position_of(node: str) -> int:
        position = graph.nodes[node]["position"]
        return n_positions - 1 if position is None else position

    candidates = sorted(
        (u, v)
        for u in graph
        for v in graph
        if 1 <= row_of[v] - row_of[u] <= 2 and position_of(u) <= position_of(v)
    )
    if len(candidates) < n_edges:
        raise ParameterError(
            f"only {len(candidates)} upward edges are possible; asked for n_edges={n_edges}"
        )
    for source, target in rng.sample(candidates, n_edges):
        # heavy-tailed like measured effects: most edges weak, a few strong
        magnitude = min(max(rng.lognormvariate(-2.0, 1.0), 0.01), 1.0)
        weight = round(rng.choice((-1, 1)) * magnitude, 3)
        graph.add_edge(source, target, weight=weight, method=rng.choice(("acdc", "attribution")))
    return graph
