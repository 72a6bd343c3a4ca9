"""Influence and pruning (featcircuits.graph.influence), and that threshold / top_k_edges
never cut a circuit off from its target."""

import warnings

import networkx as nx
import numpy as np
import pytest

import featcircuits as fc
from featcircuits.errors import CircuitWarning, GraphError, ParameterError
from featcircuits.graph import influence, prune, reaching, strongest_path, threshold, top_k_edges
from featcircuits.render import random_layered_circuit


def _dag():
    """a, b -> c; a -> d; c, d -> t (hand-computed influence in the tests)."""
    graph = nx.DiGraph(format_version=1, target_nodes=["output/t"])
    for node, kind in (("resid_out.0/1", "feature"), ("resid_out.0/2", "feature"),
                       ("resid_out.1/3", "feature"), ("resid_out.1/4", "feature"),
                       ("output/t", "output")):
        graph.add_node(node, kind=kind, layer=0, position=None)
    a, b, c, d, t = "resid_out.0/1", "resid_out.0/2", "resid_out.1/3", "resid_out.1/4", "output/t"
    for u, v, w in ((a, c, 3.0), (b, c, -1.0), (a, d, 1.0), (c, t, 2.0), (d, t, -1.0)):
        graph.add_edge(u, v, weight=w)
    return graph, (a, b, c, d, t)


def test_influence_matches_hand_computation_and_matrix_inverse():
    graph, (a, b, c, d, t) = _dag()
    result = influence(graph)
    # A[t,c] = 2/3, A[t,d] = 1/3, A[c,a] = 3/4, A[c,b] = 1/4, A[d,a] = 1
    expected = {c: 2 / 3, d: 1 / 3, a: 0.75 * 2 / 3 + 1 / 3, b: 0.25 * 2 / 3, t: 0.0}
    assert result.nodes == pytest.approx(expected)
    assert result.edges == pytest.approx({(c, t): 2 / 3, (d, t): 1 / 3, (a, c): 0.5,
                                          (b, c): 1 / 6, (a, d): 1 / 3})
    # reference: I = t A (1 - A)^-1 with dense numpy
    order = list(graph.nodes)
    matrix = nx.to_numpy_array(graph, nodelist=order, weight="weight").T  # [target, source]
    matrix = np.abs(matrix)
    sums = matrix.sum(1, keepdims=True)
    matrix = np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)
    weights = np.array([1.0 if n == t else 0.0 for n in order])
    reference = weights @ matrix @ np.linalg.inv(np.eye(len(order)) - matrix)
    assert [result.nodes[n] for n in order] == pytest.approx(reference.tolist())


def test_prune_keeps_the_influence_share():
    graph, (a, _b, c, d, t) = _dag()
    # node influence: a 5/6, c 2/3, d 1/3, b 1/6 (total 2): half needs a and c
    half = prune(graph, node_share=0.5, edge_share=0.98)
    assert set(half.edges) == {(a, c), (c, t)}
    assert half.graph["pruned"] == {"node_share": 0.5, "edge_share": 0.98, "nodes_before": 5,
                                    "edges_before": 5}
    assert half.nodes[a]["influence"] == pytest.approx(5 / 6)
    # 0.9 keeps a, c, d; re-normalised edge influence c->t, a->c 2/3, d->t, a->d 1/3:
    # 60 % of it is the first two, then d has no edge and drops out
    assert set(prune(graph, node_share=0.9, edge_share=0.6).edges) == {(a, c), (c, t)}
    assert set(prune(graph, node_share=0.9, edge_share=0.9).edges) == {
        (a, c), (c, t), (a, d), (d, t)}
    assert set(prune(graph, 1.0, 1.0).edges) == set(graph.edges)
    with pytest.raises(ParameterError, match="node_share"):
        prune(graph, node_share=0)
    with pytest.raises(ParameterError, match="edge_share"):
        prune(graph, edge_share=1.5)


def test_strongest_path_and_cycles():
    graph, (a, _b, c, _d, t) = _dag()
    assert strongest_path(graph, t) == ([a, c, t], pytest.approx(2 / 3))
    assert strongest_path(graph, a) == ([a], float("inf"))
    graph.add_edge(t, a, weight=1.0)
    with pytest.raises(GraphError, match="cycle"):
        influence(graph)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_random_circuits_stay_connected(seed):
    graph = random_layered_circuit(120, 400, seed=seed)
    target = "output/logit_diff"
    sizes = []
    for share in (0.3, 0.5, 0.8, 0.95, 1.0):
        pruned = prune(graph, node_share=share, edge_share=share)
        assert target in pruned and pruned.in_degree(target) > 0
        assert all(nx.has_path(pruned, node, target) for node in pruned)
        assert set(pruned.edges) <= set(graph.edges)
        sizes.append(pruned.number_of_nodes())
    assert sizes[0] < sizes[2] < sizes[-1]
    assert set(pruned.nodes) == set(reaching(graph).nodes)  # share 1 keeps all that reaches
    for k in (1, 5, 40):
        top = top_k_edges(graph, k)
        assert top.number_of_edges() == k
        assert all(nx.has_path(top, node, target) for node in top)


def test_top_k_edges_ranks_by_influence_not_raw_weight():
    graph, (a, b, c, _d, t) = _dag()
    graph.edges[a, c]["weight"] = 300.0  # large in c's units, but c's share is what counts
    graph.edges[b, c]["weight"] = -100.0
    top = top_k_edges(graph, 2)
    assert set(top.edges) == {(c, t), (a, c)}
    assert fc.top_k_edges is top_k_edges and fc.prune is prune


def test_threshold_never_cuts_the_target_off():
    graph, (a, _b, c, _d, t) = _dag()
    with pytest.warns(CircuitWarning, match=r"tau=5 .*tau <= 2 keeps"):
        cut = threshold(graph, 5.0)
    assert set(cut.edges) == {(a, c), (c, t)}  # the widest path: min(3, 2) = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(threshold(graph, 1.5).edges) == {(a, c), (c, t)}
        assert set(threshold(graph, 0.5).edges) == set(graph.edges)
