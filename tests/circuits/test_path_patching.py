"""Edge-set evaluation without dense features (``circuits.path_patching``) equals the dense
assembly (``faithfulness``'s path for cross-layer transcoders, forced here).

Circuits with absent edges into feature and error nodes, positional nodes, every ablation,
a transcoder site, and sets that keep most features (the complement) or few (the circuit):
both ways of writing the assembled activation are exercised.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from featcircuits.circuits import acdc_circuit, attribution_circuit, faithfulness
from featcircuits.circuits.faithfulness import EdgeSpec, edge_spec, evaluate_edge_specs
from featcircuits.circuits.targets import FeatureTarget, LogitTarget
from featcircuits.engine.runs import ERROR, CircuitRuns
from featcircuits.graph import parse_node_id
from tests.circuits.test_edge_readouts import _dictionaries
from tests.support.factories import QUIET, random_saes

faithfulness_module = importlib.import_module("featcircuits.circuits.faithfulness")


def _ids(n=4, t=6, seed=3):
    return torch.randint(0, 60, (n, t), generator=torch.Generator().manual_seed(seed))


def _both(runs, specs, ablation, monkeypatch):
    sparse = evaluate_edge_specs(runs, specs, ablation=ablation)
    with monkeypatch.context() as patch:
        patch.setattr(faithfulness_module, "sparse_possible", lambda runs: False)
        dense = evaluate_edge_specs(runs, specs, ablation=ablation)
    return sparse, dense


def _specs(runs, graph):
    """The circuit, its complement, nothing, the circuit (and its complement) with edges at
    error nodes removed (those nodes kept), and every feature without the error nodes."""
    cut = graph.copy()
    removed = 0
    for u, v in list(cut.edges):
        if removed < 2 and ("error" in u or "error" in v):
            cut.remove_edge(u, v)
            removed += 1
    assert removed, "the circuit has an edge at an error node"
    empty = EdgeSpec({s: torch.zeros(runs.width, runs.dictionaries[s].n_features + 1,
                                     dtype=torch.bool) for s in runs.sites})
    # every feature kept but no error node: the error ablated next to mostly kept features
    no_errors = edge_spec(runs, graph, complement=True)
    for mask in no_errors.kept.values():
        mask[:, -1] = False
    return [edge_spec(runs, graph), edge_spec(runs, graph, complement=True), empty,
            edge_spec(runs, cut), edge_spec(runs, cut, complement=True), no_errors]


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize("positional", [False, True])
def test_sparse_edge_evaluation_equals_dense(tiny_models, ablation, positional, monkeypatch):
    runs = CircuitRuns(tiny_models["gpt_neox"], random_saes(), _ids(),
                       targets=[LogitTarget(9, positions="all")], settings=QUIET)
    graph = acdc_circuit(runs, tau=2e-3, ablation=ablation, positional=positional)
    assert graph.number_of_edges() > 5
    assert any(parse_node_id(n).kind == "error" for n in graph)
    specs = _specs(runs, graph)
    assert any(masks for spec in specs for masks in spec.ablated_into.values())
    sparse, dense = _both(runs, specs, ablation, monkeypatch)
    scale = float(dense.abs().max())
    assert scale > 1e-3 and float((dense[0] - dense[2]).abs()) > 1e-4
    torch.testing.assert_close(sparse, dense, atol=1e-5 * scale, rtol=1e-5)


def test_sparse_edge_evaluation_reads_transcoders_and_feature_targets(tiny_models, monkeypatch):
    runs = CircuitRuns(tiny_models["gpt_neox"], _dictionaries("transcoder"), _ids(),
                       targets=[LogitTarget(3, minus=4), FeatureTarget("mlp_out.1", 2)],
                       settings=QUIET)
    graph = attribution_circuit(runs, tau=1e-4, node_tau=1e-4)
    assert graph.number_of_edges() > 5
    specs = [edge_spec(runs, graph), edge_spec(runs, graph, complement=True)]
    sparse, dense = _both(runs, specs, "zero", monkeypatch)
    scale = float(dense.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(sparse, dense, atol=1e-5 * scale, rtol=1e-5)
    assert faithfulness(runs, graph, edges=True)["m_circuit"] == pytest.approx(
        float(sparse[0]), abs=1e-6 * scale)


def test_absent_edge_into_an_error_node_changes_the_metric(tiny_models, monkeypatch):
    """An error node that loses every incoming edge is re-read from a copy with its
    upstream nodes at their source: the value moves, identically on both paths."""
    runs = CircuitRuns(tiny_models["gpt_neox"], random_saes(), _ids(),
                       targets=[LogitTarget(9, positions="all")], settings=QUIET)
    graph = acdc_circuit(runs, tau=2e-3, ablation="mean")
    errors = [n for n in graph if parse_node_id(n).kind == "error" and graph.in_degree(n)]
    assert errors
    cut = graph.copy()
    cut.remove_edges_from(list(cut.in_edges(errors[0])))
    specs = [edge_spec(runs, graph), edge_spec(runs, cut)]
    assert any(key[1] == ERROR for key in specs[1].ablated_into if not isinstance(key, int))
    sparse, dense = _both(runs, specs, "mean", monkeypatch)
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-5)
    assert float((dense[0] - dense[1]).abs()) > 1e-5
