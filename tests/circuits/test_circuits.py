"""Feature circuits: a planted circuit, exact edges against plain torch hooks, attribution
completeness, edge/node evaluation, graph helpers and graph I/O."""

from __future__ import annotations

import itertools
import json
import math

import networkx as nx
import pytest
import torch

from featcircuits import CircuitWarning, GraphError, NonFiniteError, ParameterError, load_model
from featcircuits.circuits import (
    ablation_effects,
    acdc_circuit,
    attribution_circuit,
    exact_node_effects,
    feature_graph,
    hybrid_circuit,
    node_attributions,
)
from featcircuits.circuits.faithfulness import (
    EdgeSpec,
    circuit_masks,
    evaluate_edge_specs,
    evaluate_node_sets,
    faithfulness,
    faithfulness_curve,
    node_masks,
)
from featcircuits.circuits.targets import FeatureTarget, LogitTarget
from featcircuits.dictionaries import LinearBasis, SparseAutoencoder
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.engine.edits import patch_error, patch_site
from featcircuits.engine.runs import ERROR, CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.graph import make_node_id, parse_node_id, reaching, threshold, top_k_edges
from featcircuits.graph.io import (
    edges_frame,
    nodes_frame,
    read_graphml,
    read_json,
    write_graphml,
    write_json,
    write_tables,
)
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import Site
from tests.support.factories import QUIET, random_saes
from tests.support.hooks import on_hidden

A, C, B = 0, 1, 0  # planted: feature A (and C) of resid_out.0, feature B of resid_out.1
GAIN = 2.0


def _ids(n=4, t=6, seed=3):
    return torch.randint(0, 60, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def planted(checkpoint_dirs):
    """A 2-layer GPT-NeoX whose layer 1 is the identity, an orthonormal basis at resid_out.0
    and an SAE at resid_out.1 whose feature B reads GAIN × feature A's direction (and is
    always active). So ablating A changes B by exactly −GAIN·c_A; C is orthogonal to B."""
    model = load_model(checkpoint_dirs["gpt_neox"])
    plain = underlying_module(model)
    layer = plain.gpt_neox.layers[1]
    with torch.no_grad():
        plain.gpt_neox.embed_in.weight.mul_(50.0)  # activations of order 1
        for linear in (layer.attention.dense, layer.mlp.dense_4h_to_h):
            linear.weight.zero_()
            linear.bias.zero_()
    with model.trace(_ids()):
        activations = Site.parse("resid_out.0").read(model).save()
    # feature A points along the mean activation, so it is active with a consistent sign
    start = torch.randn(32, 32, generator=torch.Generator().manual_seed(5))
    start[:, 0] = activations.detach().mean((0, 1))
    basis_matrix, _ = torch.linalg.qr(start)
    upstream = LinearBasis(basis_matrix.T.contiguous(), basis_matrix.T.contiguous(),
                           site="resid_out.0")
    downstream = SparseAutoencoder(32, 6, site="resid_out.1")
    with torch.no_grad():
        downstream.b_dec.zero_()
        downstream.W_enc[:, B] = GAIN * upstream.directions[A]
        downstream.b_enc[B] = 20.0
    return model, {"resid_out.0": upstream, "resid_out.1": downstream}


def _expected_ab(model, dictionaries, ids):
    runs = CircuitRuns(model, dictionaries, ids, targets=[FeatureTarget("resid_out.1", B)],
                       settings=QUIET)
    c_a = runs.features["resid_out.0"][..., A]
    assert (runs.features["resid_out.1"][..., B] > 0).all()  # B stays in its linear region
    return float((GAIN * c_a).sum(1).mean()), runs


@pytest.mark.parametrize("method", ["acdc", "attribution", "ig", "hybrid", "feature_graph"])
def test_planted_circuit_is_found(planted, method):
    model, dictionaries = planted
    ids = _ids()
    expected, runs = _expected_ab(model, dictionaries, ids)
    assert abs(expected) > 0.5
    tau = 0.05 * abs(expected)
    if method == "acdc":
        graph = acdc_circuit(runs, tau=tau)
    elif method in ("attribution", "ig"):
        graph = attribution_circuit(runs, tau=tau, method=method, steps=4)
    elif method == "hybrid":
        graph = hybrid_circuit(runs, tau=tau)
        assert graph.graph["attribution_wrong_sign"] == 0
        assert graph.graph["attribution_wrong_threshold"] == 0
        comparison = graph.graph["comparison"]
        assert graph.graph["verified_edges"] == len(comparison) >= 1
        assert all(row["sign_agrees"] and row["threshold_agrees"] for row in comparison)
        verified = {(row["source"], row["target"]): row["exact"] for row in comparison}
        for u, v, w in graph.edges(data="weight"):
            assert verified[u, v] == w  # every kept edge carries its exact weight
    else:
        graph = feature_graph(model, dictionaries, ids, upstream="resid_out.0",
                              downstream="resid_out.1", downstream_features=[B], tau=tau,
                              settings=QUIET)
    a, c, b = "resid_out.0/0", "resid_out.0/1", "resid_out.1/0"
    assert graph.has_edge(a, b)
    weight = graph.edges[a, b]["weight"]
    assert math.copysign(1, weight) == math.copysign(1, expected)
    assert weight == pytest.approx(expected, rel=0.05)
    assert not graph.has_edge(c, b)
    assert c not in graph
    # only A drives B: no other feature (the basis is orthonormal, B reads only A)
    assert {u for u, _ in graph.in_edges(b)} == {a}


def test_planted_circuit_positional(planted):
    model, dictionaries = planted
    ids = _ids()
    _, runs = _expected_ab(model, dictionaries, ids)
    c_a = runs.features["resid_out.0"][..., A]
    graph = acdc_circuit(runs, tau=1e-3, positional=True)
    for position in (0, 3, 5):
        ident = make_node_id("resid_out.0", A, position)
        assert graph.edges[ident, "resid_out.1/0"]["weight"] == pytest.approx(
            float(GAIN * c_a[:, position].mean()), rel=1e-3)
        assert graph.nodes[ident]["position"] == position
    assert not any(parse_node_id(u).feature == C for u in graph.nodes if u.startswith("resid"))
    assert graph.graph["prompt_tokens"] and len(graph.graph["prompt_tokens"]) == 6


def test_planted_faithfulness_nodes_and_edges(planted):
    model, dictionaries = planted
    _, runs = _expected_ab(model, dictionaries, _ids())
    graph = acdc_circuit(runs, tau=0.05)
    for edges in (False, True):
        scores = faithfulness(runs, graph, edges=edges)
        assert scores["faithfulness"] == pytest.approx(1.0, abs=1e-4)
        assert scores["complement"] == pytest.approx(0.0, abs=1e-4)
        assert scores["completeness"] == pytest.approx(1.0, abs=1e-4)
    # keep both nodes but drop the edge: B no longer receives A, as if A were ablated
    cut = graph.copy()
    cut.remove_edge("resid_out.0/0", "resid_out.1/0")
    cut.add_node("resid_out.0/0")  # still a node of the evaluated set
    assert faithfulness(runs, cut, edges=True)["faithfulness"] == pytest.approx(0.0, abs=1e-4)
    assert faithfulness(runs, cut)["faithfulness"] == pytest.approx(1.0, abs=1e-4)


def test_faithfulness_defaults_to_the_circuits_ablation(random_setup):
    """faithfulness / faithfulness_curve evaluate with the ablation the graph was found with
    (graph.graph["ablation"]) unless told otherwise, and refuse a graph that records none."""
    model, saes = random_setup
    runs = CircuitRuns(model, saes, _ids(), targets=[LogitTarget(9, positions="all")],
                       settings=QUIET)
    for ablation, other in (("zero", "mean"), ("mean", "zero")):
        graph = acdc_circuit(runs, tau=5e-3, ablation=ablation, node_effects=False)
        assert graph.graph["ablation"] == ablation
        default = faithfulness(runs, graph)
        own = faithfulness(runs, graph, ablation=ablation)
        assert default == own
        assert abs(faithfulness(runs, graph, ablation=other)["faithfulness"]
                   - default["faithfulness"]) > 1e-3
        curve = faithfulness_curve(runs, graph, sizes=[1, 4])
        assert curve.equals(faithfulness_curve(runs, graph, sizes=[1, 4], ablation=ablation))
    del graph.graph["ablation"]
    with pytest.raises(GraphError, match="records no ablation"):
        faithfulness(runs, graph)
    with pytest.raises(GraphError, match="records no ablation"):
        faithfulness_curve(runs, graph)
    assert faithfulness(runs, graph, ablation="mean") == faithfulness(runs, graph,
                                                                      ablation="mean")


def test_every_discovery_method_returns_a_graph_with_its_ablation(random_setup, tmp_path):
    """acdc, attribution and hybrid share their core arguments and all return a DiGraph;
    the hybrid's comparison with exact ablation survives graph files."""
    model, saes = random_setup
    dictionaries = {"resid_out.0": saes["resid_out.0"], "resid_out.1": saes["resid_out.1"]}
    core = {"targets": [LogitTarget(5, positions="all")], "tau": 0.02, "ablation": "mean",
            "relative_tau": True, "settings": QUIET}
    graphs = [acdc_circuit(model, dictionaries, _ids(), **core),
              attribution_circuit(model, dictionaries, _ids(), **core),
              hybrid_circuit(model, dictionaries, _ids(), **core)]
    for graph, method in zip(graphs, ("acdc", "attribution", "hybrid")):
        assert isinstance(graph, nx.DiGraph)
        assert graph.graph["method"] == method
        assert graph.graph["ablation"] == "mean" and graph.graph["relative_tau"] is True
    hybrid = graphs[-1]
    rows = hybrid.graph["comparison"]
    assert hybrid.graph["verified_edges"] == len(rows) > 0
    assert hybrid.graph["attribution_wrong_sign"] == sum(not r["sign_agrees"] for r in rows)
    write_json(hybrid, tmp_path / "hybrid.json")
    write_graphml(hybrid, tmp_path / "hybrid.graphml")
    for again in (read_json(tmp_path / "hybrid.json"), read_graphml(tmp_path / "hybrid.graphml")):
        assert again.graph["comparison"] == rows


# ------------------------------------------------------------------ exact vs torch hooks
@pytest.fixture(scope="module")
def random_setup(tiny_models):
    return tiny_models["gpt_neox"], random_saes()


def _hooked(model, edits, reads, ids):
    """Run the plain torch model with output hooks: ``edits[module] = fn(out) -> out``;
    returns ``{module: output}`` for modules in ``reads`` and the logits."""
    plain = underlying_module(model)
    captured, hooks = {}, []
    for path in set(edits) | set(reads):
        def hook(module, args, out, path=path):
            if path in edits:
                out = edits[path](out)
            captured[path] = out
            return out
        hooks.append(plain.get_submodule(path).register_forward_hook(on_hidden(hook)))
    try:
        with torch.no_grad():
            logits = plain(ids).logits
    finally:
        for handle in hooks:
            handle.remove()
    return captured, logits


@torch.no_grad()
def test_acdc_edges_match_manual_torch_hooks(random_setup):
    model, saes = random_setup
    ids = _ids()
    dictionaries = {"resid_out.0": saes["resid_out.0"], "resid_out.1": saes["resid_out.1"]}
    token = 7
    graph = acdc_circuit(model, dictionaries, ids, targets=[LogitTarget(token, positions="all")],
                         tau=0.0, ablation="zero", settings=QUIET)
    layer0, layer1 = "gpt_neox.layers.0", "gpt_neox.layers.1"
    sae0, sae1 = saes["resid_out.0"], saes["resid_out.1"]
    clean, clean_logits = _hooked(model, {}, [layer0, layer1], ids)
    active0 = torch.nonzero(sae0.encode(clean[layer0]).amax((0, 1)) > 0).flatten().tolist()
    active1 = torch.nonzero(sae1.encode(clean[layer1]).amax((0, 1)) > 0).flatten().tolist()
    checked = 0
    for u in active0[:3]:
        def ablate(out, u=u):
            return out - sae0.encode(out)[..., u:u + 1] * sae0.directions[u]
        ablated, _ = _hooked(model, {layer0: ablate}, [layer1], ids)
        for d in active1[:3]:
            # intermediate nodes average over the tokens (node_reduce="mean")
            expected = float((sae1.encode(clean[layer1])[..., d]
                              - sae1.encode(ablated[layer1])[..., d]).mean(1).mean())
            edge = (f"resid_out.0/{u}", f"resid_out.1/{d}")
            if graph.has_edge(*edge):
                assert graph.edges[edge]["weight"] == pytest.approx(expected, abs=2e-5)
                checked += 1
            else:
                assert f"resid_out.1/{d}" not in graph  # pruned: no path to the target
    for u in active1[:3]:
        def ablate1(out, u=u):
            return out - sae1.encode(out)[..., u:u + 1] * sae1.directions[u]
        _, logits = _hooked(model, {layer1: ablate1}, [], ids)
        expected = float((clean_logits[..., token] - logits[..., token]).sum(1).mean())
        assert graph.edges[f"resid_out.1/{u}", "output/logit_7"]["weight"] == pytest.approx(
            expected, abs=2e-5)
        checked += 1
    # error node: replace resid_out.0's error by zero
    def ablate_error(out):
        return sae0.decode(sae0.encode(out))
    _, logits = _hooked(model, {layer0: ablate_error}, [], ids)
    total = float((clean_logits[..., token] - logits[..., token]).sum(1).mean())
    assert graph.nodes["resid_out.0/error"]["effect"] == pytest.approx(total, abs=2e-5)
    assert checked >= 4


def test_direct_effects_freeze_intermediate_sites(random_setup):
    """An edge resid_out.0 → output bypasses mlp_out.1: the MLP output is held at its clean
    value, only attention and the residual carry the ablation."""
    model, saes = random_setup
    ids = _ids()
    dictionaries = {"resid_out.0": saes["resid_out.0"], "mlp_out.1": saes["mlp_out.1"]}
    token = 11
    runs = CircuitRuns(model, dictionaries, ids, targets=[LogitTarget(token, positions="all")],
                       settings=QUIET)
    sae0 = saes["resid_out.0"]
    u = runs.active_features("resid_out.0", "mean")[0]
    mean_u = runs.sources("mean")[0]["resid_out.0"][0, 0, u]
    effects, columns = ablation_effects(runs, "resid_out.0", [("resid_out.0", u, None)], {},
                                        ablation="mean", positional=False)
    mlp = "gpt_neox.layers.1.mlp"
    clean, clean_logits = _hooked(model, {}, [mlp], ids)

    def ablate(out):
        return out + (mean_u - sae0.encode(out)[..., u:u + 1]) * sae0.directions[u]
    _, logits = _hooked(model, {"gpt_neox.layers.0": ablate, mlp: lambda out: clean[mlp]}, [],
                        ids)
    expected = float((clean_logits[..., token] - logits[..., token]).sum(1).mean())
    assert columns == [f"output/logit_{token}"]
    assert float(effects[0, 0]) == pytest.approx(expected, abs=2e-5)
    _, free_logits = _hooked(model, {"gpt_neox.layers.0": ablate}, [], ids)
    total = float((clean_logits[..., token] - free_logits[..., token]).sum(1).mean())
    assert abs(total - expected) > 1e-4  # freezing matters: the MLP path is excluded
    effect = exact_node_effects(runs, [("resid_out.0", u, None)], ablation="mean",
                                positional=False)[("resid_out.0", u, None)]
    assert effect == pytest.approx(total, abs=2e-5)


def test_batched_ablation_equals_one_at_a_time(random_setup):
    model, saes = random_setup
    dictionaries = {"resid_out.0": saes["resid_out.0"], "resid_out.1": saes["resid_out.1"]}
    target = [LogitTarget(3, positions="all")]
    big = CircuitRuns(model, dictionaries, _ids(), targets=target, settings=QUIET)
    small = CircuitRuns(model, dictionaries, _ids(), targets=target,
                        settings=RunSettings(progress=False, max_rows=4))
    nodes = [("resid_out.0", f, None) for f in big.active_features("resid_out.0", "zero")[:6]]
    nodes.append(("resid_out.0", ERROR, None))
    down = {"resid_out.1": [("resid_out.1", 0, None), ("resid_out.1", ERROR, None)]}
    one, _ = ablation_effects(big, "resid_out.0", nodes, down, ablation="zero",
                              positional=False)
    many, _ = ablation_effects(small, "resid_out.0", nodes, down, ablation="zero",
                               positional=False)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- attribution checks
def test_attributions_with_error_nodes_sum_to_total_effect_when_linear(planted):
    """The target is a feature of a linear basis at resid_out.1 and layer 1 is the
    identity, so the target is linear in resid_out.0: feature + error attributions at
    resid_out.0 add up to the effect of ablating the whole site, and each equals the
    node's exact effect."""
    model, _dictionaries = planted
    torch.manual_seed(9)
    sae = SparseAutoencoder(32, 40, site="resid_out.0")
    with torch.no_grad():
        sae.b_enc.uniform_(-0.05, 0.3)
        sae.b_dec.normal_(0, 0.1)
    linear = LinearBasis(torch.randn(4, 32), site="resid_out.1")
    runs = CircuitRuns(model, {"resid_out.0": sae, "resid_out.1": linear}, _ids(),
                       targets=[FeatureTarget("resid_out.1", 2)], settings=QUIET)
    kept_nothing = node_masks(runs, [])
    kept_nothing["resid_out.1"][:] = True
    for ablation in ("zero", "mean"):
        runs_metric = evaluate_node_sets(runs, [kept_nothing], ablation=ablation)
        total = runs.metric_value - float(runs_metric[0])
        for method in ("attribution", "ig"):
            effects = node_attributions(runs, ablation=ablation, method=method, steps=3)
            assert ("resid_out.0", ERROR, None) in effects
            if ablation == "zero":  # (with mean ablation and a constant gradient it is 0)
                assert abs(effects[("resid_out.0", ERROR, None)]) > 1e-3
            assert sum(effects.values()) == pytest.approx(total, abs=1e-4)
        exact = exact_node_effects(runs, list(effects), ablation=ablation, positional=False)
        for node, value in effects.items():
            assert exact[node] == pytest.approx(value, abs=1e-4)


def test_attribution_edges_track_exact_edges(random_setup, monkeypatch):
    """First-order edge estimates agree with ablation on small ablations: scale the source
    towards the clean values so the linearisation is accurate."""
    model, saes = random_setup
    dictionaries = {"resid_out.0": saes["resid_out.0"], "resid_out.1": saes["resid_out.1"]}
    runs = CircuitRuns(model, dictionaries, _ids(), targets=[LogitTarget(5, positions="all")],
                       settings=QUIET)
    features, errors = runs.sources("mean")
    epsilon = 1e-2
    scaled = (
        {s: runs.features[s] + epsilon * (features[s] - runs.features[s]) for s in features},
        {s: runs.errors[s] + epsilon * (errors[s] - runs.errors[s]) for s in errors})

    def sources(ablation):  # every consumer reads the ablation's values through sources()
        assert ablation == "mean"
        return scaled

    monkeypatch.setattr(runs, "sources", sources)
    exact = acdc_circuit(runs, tau=0.0, ablation="mean", node_effects=False)
    approx = attribution_circuit(runs, tau=0.0, node_tau=0.0, ablation="mean")
    weights = [(w, approx.edges[u, v]["weight"]) for u, v, w in exact.edges(data="weight")
               if approx.has_edge(u, v)]
    assert len(weights) > 20
    scale = max(abs(w) for w, _ in weights)
    for w_exact, w_approx in weights:
        assert w_approx == pytest.approx(w_exact, abs=0.03 * scale)


# --------------------------------------------------------------------- edge evaluation
def test_edge_evaluation_agrees_with_node_evaluation(random_setup):
    model, saes = random_setup
    runs = CircuitRuns(model, saes, _ids(), targets=[LogitTarget(9, positions="all")],
                       settings=QUIET)
    graph = acdc_circuit(runs, tau=2e-3, ablation="mean")
    assert graph.number_of_edges() > 5
    assert {graph.nodes[n]["site"] for n in graph} >= {"resid_out.0", "mlp_out.1", "resid_out.1"}
    full = node_masks(runs, [])
    for mask in full.values():
        mask[:] = True
    empty = node_masks(runs, [])
    circuit = circuit_masks(runs, graph)
    nodes = evaluate_node_sets(runs, [full, empty, circuit])
    edges = evaluate_edge_specs(runs, [EdgeSpec(full), EdgeSpec(empty), EdgeSpec(circuit)])
    torch.testing.assert_close(nodes, edges, atol=1e-4, rtol=1e-4)
    assert float(nodes[0]) == pytest.approx(runs.metric_value, abs=1e-4)
    assert abs(float(nodes[0] - nodes[1])) > 1e-3
    curve = faithfulness_curve(runs, graph, by="edges", sizes=[0, 3, graph.number_of_edges()])
    assert list(curve["k"]) == [0, 3, graph.number_of_edges()]
    assert curve["faithfulness"].iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert curve["faithfulness"].iloc[-1] == pytest.approx(
        faithfulness(runs, graph, edges=True)["faithfulness"], abs=1e-5)
    nodes_curve = faithfulness_curve(runs, graph, by="nodes")
    assert nodes_curve["faithfulness"].iloc[-1] == pytest.approx(
        faithfulness(runs, graph)["faithfulness"], abs=1e-5)


# ---------------------------------------------------------------------- graph helpers
def test_node_ids_round_trip_and_errors():
    cases = [("resid_out.3/117", ("feature", "resid_out.3", 117, None)),
             ("resid_out.3/117@5", ("feature", "resid_out.3", 117, 5)),
             ("resid_out.3/error", ("error", "resid_out.3", None, None)),
             ("mlp_out.0/error@2", ("error", "mlp_out.0", None, 2)),
             ("embed/42@1", ("input", "embed", 42, 1)),
             ("input@5", ("input", None, None, 5))]
    for ident, (kind, site, feature, position) in cases:
        key = parse_node_id(ident)
        assert (key.kind, key.site, key.feature, key.position) == (kind, site, feature, position)
        assert key.id == ident
    assert parse_node_id("output/logit_diff").name == "logit_diff"
    assert make_node_id(kind="output", name="logit_diff") == "output/logit_diff"
    for bad in ("resid_out.3", "resid_out.3/x", "", "a/1@-1"):
        with pytest.raises(GraphError, match="cannot parse"):
            parse_node_id(bad)
    with pytest.raises(GraphError):
        make_node_id("resid_out.3", -1)


def _toy_graph():
    graph = nx.DiGraph(format_version=1, target="t", target_nodes=["output/m"], metric="m",
                       tau=0.0, model="toy", method="acdc")
    graph.add_node("output/m", kind="output", site=None, layer=2, feature=None, position=None,
                   activation=1.5, effect=None, label="m")
    for layer, feature in ((0, 1), (0, 2), (1, 3), (1, 4)):
        graph.add_node(f"resid_out.{layer}/{feature}", kind="feature", site=f"resid_out.{layer}",
                       layer=layer, feature=feature, position=None, activation=0.5,
                       effect=0.1 * feature, label=f"f{feature}")
    weights = {("resid_out.0/1", "resid_out.1/3"): 0.5, ("resid_out.0/2", "resid_out.1/4"): -0.05,
               ("resid_out.0/2", "resid_out.1/3"): 0.2, ("resid_out.1/3", "output/m"): 1.0,
               ("resid_out.1/4", "output/m"): -0.3}
    for (u, v), w in weights.items():
        graph.add_edge(u, v, weight=w, method="acdc")
    return graph


def test_threshold_is_monotone_and_prunes():
    graph = _toy_graph()
    previous = set(graph.edges)
    for tau in (0.0, 0.04, 0.1, 0.25, 0.4, 0.6):
        pruned = threshold(graph, tau)
        edges = set(pruned.edges)
        assert edges <= previous
        assert all(abs(w) >= tau for _, _, w in pruned.edges(data="weight"))
        assert all(nx.has_path(pruned, node, "output/m") for node in pruned.nodes)
        previous = edges
    assert set(threshold(graph, 0.25).nodes) == {"resid_out.0/1", "resid_out.1/3", "output/m",
                                                 "resid_out.1/4"}
    assert set(threshold(graph, 0.6).nodes) == {"resid_out.1/3", "output/m"}
    with pytest.warns(CircuitWarning, match="tau <= 0.5 keeps"):  # never cut off
        assert set(threshold(graph, 2.0).edges) == {("resid_out.0/1", "resid_out.1/3"),
                                                    ("resid_out.1/3", "output/m")}
    assert set(top_k_edges(graph, 2).edges) == {("resid_out.1/3", "output/m"),
                                                ("resid_out.0/1", "resid_out.1/3")}
    assert set(reaching(graph, "resid_out.1/4").nodes) == {"resid_out.0/2", "resid_out.1/4"}
    with pytest.raises(GraphError, match="not in the graph"):
        reaching(graph, ["nope/1"])
    # copy=False prunes the graph itself: same nodes and edges, the same object, data kept
    copied = reaching(graph, "resid_out.1/4")
    in_place = graph.copy()
    assert reaching(in_place, "resid_out.1/4", copy=False) is in_place
    assert set(in_place.nodes) == set(copied.nodes)
    assert sorted(in_place.edges(data=True)) == sorted(copied.edges(data=True))
    assert graph.number_of_nodes() > in_place.number_of_nodes()   # the original untouched


@pytest.mark.parametrize("relative", [False, True])
def test_acdc_thresholds_are_monotone(random_setup, relative):
    model, saes = random_setup
    runs = CircuitRuns(model, saes, _ids(), targets=[LogitTarget(9, positions="all")],
                       settings=QUIET)
    taus = (0.05, 0.2, 0.5) if relative else (0.002, 0.01, 0.04)
    graphs = [acdc_circuit(runs, tau=tau, node_effects=False, relative_tau=relative)
              for tau in taus]
    for smaller, larger in itertools.pairwise(graphs):
        assert set(larger.edges) <= set(smaller.edges)
    assert graphs[-1].number_of_edges() > 0
    assert graphs[0].number_of_edges() > graphs[-1].number_of_edges()
    for tau, graph in zip(taus[1:], graphs[1:]):
        # re-thresholding the loosest circuit gives the stricter ACDC circuit exactly
        assert set(threshold(graphs[0], tau).edges) == set(graph.edges)
        for u, v, w in graph.edges(data="weight"):
            limit = tau * graph.nodes[v]["scale"] if relative else tau
            assert abs(w) >= limit


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "x", None])
def test_bad_thresholds_raise(planted, bad):
    model, dictionaries = planted
    graph = _toy_graph()
    with pytest.raises(ParameterError):
        threshold(graph, bad)
    with pytest.raises(ParameterError):
        acdc_circuit(model, dictionaries, _ids(), targets="resid_out.1/0", tau=bad)
    if bad is not None:  # node_tau=None means "same as tau"
        with pytest.raises(ParameterError):
            attribution_circuit(model, dictionaries, _ids(), targets="resid_out.1/0", tau=0.1,
                                node_tau=bad)


def test_bad_options_raise(planted):
    model, dictionaries = planted
    with pytest.raises(ParameterError, match="unknown ablation"):
        acdc_circuit(model, dictionaries, _ids(), targets="resid_out.1/0", tau=0.1,
                     ablation="median")
    with pytest.raises(ParameterError, match="needs a dictionary"):
        acdc_circuit(model, dictionaries, _ids(), targets="mlp_out.1/0", tau=0.1)
    with pytest.raises(ParameterError, match="prompt pairs"):
        acdc_circuit(model, dictionaries, _ids(), targets="logit_diff", tau=0.1)
    with pytest.raises(ParameterError, match="outside prompt"):
        acdc_circuit(model, dictionaries, _ids(), tau=0.1,
                     targets=[FeatureTarget("resid_out.1", 0, positions=[9])])


# ------------------------------------------------------------------------------ I/O
def test_json_round_trip_is_lossless(planted, tmp_path):
    model, dictionaries = planted
    graph = acdc_circuit(model, dictionaries, _ids(), targets=["resid_out.1/0"], tau=0.01,
                         positional=True, settings=QUIET)
    graph.graph["note"] = {"nested": [1, 2.5, None]}
    path = write_json(graph, tmp_path / "circuit.json")
    again = read_json(path)
    assert dict(again.graph) == dict(graph.graph)
    assert list(again.nodes(data=True)) == list(graph.nodes(data=True))
    assert list(again.edges(data=True)) == list(graph.edges(data=True))
    for node, data in graph.nodes(data=True):
        for key, value in data.items():
            assert type(again.nodes[node][key]) is type(value)
    data = json.loads(path.read_text())
    data["format_version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(data))
    with pytest.raises(GraphError, match=r"format_version 2.*reads version 1"):
        read_json(tmp_path / "v2.json")


def test_graphml_and_tables(tmp_path):
    graph = _toy_graph()
    graph.graph["prompt_tokens"] = ["a", "b"]
    path = write_graphml(graph, tmp_path / "c.graphml")
    again = read_graphml(path)
    assert set(again.edges) == set(graph.edges)
    for node, data in graph.nodes(data=True):
        assert again.nodes[node] == data
    for u, v, data in graph.edges(data=True):
        assert again.edges[u, v] == data
    assert again.graph["prompt_tokens"] == ["a", "b"]
    assert again.graph["target_nodes"] == ["output/m"]
    nodes = nodes_frame(graph)
    edges = edges_frame(graph)
    assert list(nodes.columns[:9]) == ["id", "kind", "site", "layer", "feature", "position",
                                       "activation", "effect", "label"]
    assert edges["weight"].abs().is_monotonic_decreasing
    assert len(edges) == 5 and len(nodes) == 5
    nodes_path, edges_path = write_tables(graph, tmp_path / "out" / "circuit_")
    assert nodes_path.name == "circuit_nodes.csv" and edges_path.exists()
    graph.edges["resid_out.1/3", "output/m"]["weight"] = float("nan")
    with pytest.raises(NonFiniteError, match="resid_out.1/3"):
        write_json(graph, tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


# --------------------------------------------------------------- primitives, tokens
def test_patch_error_and_3d_masks(random_setup):
    model, saes = random_setup
    sae = saes["resid_out.0"]
    site = Site.parse("resid_out.0")
    ids = _ids()
    with model.trace(ids):
        clean = site.read(model).save()
    features = sae.encode(clean).detach()
    source = torch.rand_like(features)
    mask2 = (torch.rand(ids.shape[0], features.shape[-1]) > 0.5).float()
    mask3 = mask2[:, None, :].expand(-1, ids.shape[1], -1)
    outputs = []
    with torch.no_grad():
        for mask in (mask2, mask3):
            with model.trace(ids):
                edit = patch_site(model, site, sae, source, mask)
                patch_error(model, site, sae, torch.zeros_like(clean), torch.ones(ids.shape[0]),
                            prior_edit=edit)
                outputs.append(site.read(model).save())
    expected = sae.decode(torch.where(mask2[:, None, :].bool(), source, features))
    torch.testing.assert_close(outputs[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs[1], expected, atol=1e-5, rtol=1e-5)


def test_token_basis_reaches_inputs(tiny_models):
    model = tiny_models["gpt_neox"]
    tokens = TokenBasis.from_model(model)
    ids = _ids()
    with model.trace(ids):
        embedded = Site.parse("embed").read(model).save()
    features = tokens.encode(embedded)
    assert torch.equal(features.argmax(-1), ids)
    assert tokens.error(embedded).abs().max() < 1e-6
    graph = acdc_circuit(model, {"embed": tokens}, ids, targets=[LogitTarget(4, positions="all")],
                         tau=1e-3, settings=QUIET)
    inputs = [n for n, kind in graph.nodes(data="kind") if kind == "input"]
    assert inputs and all(graph.nodes[n]["layer"] == -1 for n in inputs)
    assert all(graph.nodes[n]["label"] == f"w{graph.nodes[n]['feature']}" for n in inputs)
