"""The viewer's precomputed slider keys (featcircuits.render.shares): at every share the
shown nodes are the most influential ones plus their paths, all connected to the target."""

from __future__ import annotations

import random
from pathlib import Path

import networkx as nx
import pytest

from featcircuits.graph import influence, prune, read_json
from featcircuits.render import example_circuit, random_layered_circuit
from featcircuits.render.shares import EDGE_STEPS, NODE_STEPS, slider_keys, tier

IOI = Path(__file__).resolve().parents[1] / "fixtures" / "ioi_circuit_pruned.json"


@pytest.fixture(scope="module")
def graphs():
    return {"example": example_circuit(), "ioi": read_json(IOI),
            "random": random_layered_circuit(120, 500, seed=5)}


def _shown(graph, keys, share, edge_share):
    nodes = {n for n, k in keys.nodes.items() if k < share}
    edges = {e for e, (k, ek) in keys.edges.items() if k < share and ek < edge_share}
    return nodes, edges


@pytest.mark.parametrize("name", ["example", "ioi", "random"])
def test_every_shown_node_reaches_a_target(graphs, name):
    graph = graphs[name]
    keys = slider_keys(graph)
    assert keys.by_influence and keys.targets == ("output/logit_diff",)
    assert keys.nodes["output/logit_diff"] == -1
    for share in (0.05, 0.2, 0.5, 0.8, 0.95, 0.999):
        for edge_share in (0.5, 0.98):
            nodes, edges = _shown(graph, keys, share, edge_share)
            shown = nx.DiGraph(list(edges))
            shown.add_nodes_from(nodes)
            assert set(shown) == nodes  # no edge to a hidden node
            reach = nx.ancestors(shown, "output/logit_diff") | {"output/logit_diff"}
            assert reach == nodes, (share, edge_share, sorted(nodes - reach)[:3])
            assert shown.in_degree("output/logit_diff") >= 1


@pytest.mark.parametrize("name", ["ioi", "random"])
def test_keys_rank_nodes_by_influence_like_prune(graphs, name):
    graph = graphs[name]
    keys, found = slider_keys(graph), influence(graph)
    ranked = found.node_order()
    total = sum(found.nodes[n] for n in ranked)
    for share in (0.3, 0.5, 0.8, 0.95):
        # the fewest most influential nodes carrying `share`, as prune's first step
        prefix, running = set(), 0.0
        for node in ranked:
            if running >= share * total:
                break
            prefix.add(node)
            running += found.nodes[node]
        nodes, _ = _shown(graph, keys, share, 1.0)
        assert prefix <= nodes
        extra = nodes - prefix - {"output/logit_diff"}
        # the rest are on the paths of the prefix, less influential than any prefix node
        assert all(found.nodes[n] <= min(found.nodes[p] for p in prefix) for n in extra)
        # prune keeps a subset: the prefix nodes that still reach the target through it
        assert set(prune(graph, node_share=share, edge_share=1.0)) <= nodes
    unreached = [n for n in graph if found.nodes[n] == 0 and n != "output/logit_diff"]
    assert all(keys.nodes[n] == 1.0 for n in unreached)


def test_graph_without_target_ranks_by_effect_and_weight():
    graph = example_circuit()
    graph.remove_node("output/logit_diff")
    keys = slider_keys(graph)
    assert not keys.by_influence
    strongest = max(graph, key=lambda n: abs(graph.nodes[n]["effect"] or 0))
    assert keys.nodes[strongest] == 0.0
    weights = nx.get_edge_attributes(graph, "weight")
    top = max(weights, key=lambda e: abs(weights[e]))
    assert keys.edges[top][1] == 0.0


def test_tier_matches_the_slider_comparison():
    rng = random.Random(0)
    values = [rng.random() for _ in range(300)] + [m / 100 for m in range(101)] + [-1.0, 1.0, 1.5]
    for steps in (NODE_STEPS, EDGE_STEPS):
        for key in values:
            m = tier(key, steps)
            assert 1 <= m <= steps + 1
            for slider in range(1, steps + 1):  # shown at slider / steps  <=>  key < slider / steps
                assert (m <= slider) == (key < slider / steps), (key, slider)
