"""Circuits with a transcoder (reads ``mlp_in.1``, writes ``mlp_out.1``): features are encoded
at the INPUT site and decoded (edits, error term) at the OUTPUT site, in the clean run, in
ablation traces, in attribution gradients and in faithfulness. Every number is checked
against plain torch forward hooks on the Hugging Face module, and against the wrong
(output-site) reading, which must differ by a clear margin."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit
from featcircuits.circuits.faithfulness import faithfulness
from featcircuits.circuits.targets import LogitTarget
from featcircuits.dictionaries import SparseAutoencoder
from featcircuits.dictionaries.transcoder import Transcoder
from featcircuits.engine.runs import CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.model.loading import underlying_module

TOKEN = 7
LAYER0, MLP1 = "gpt_neox.layers.0", "gpt_neox.layers.1.mlp"
TOL = 1e-5


def _ids(n=4, t=6, seed=3):
    return torch.randint(0, 60, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def setup(tiny_models):
    """The 2-layer GPT-NeoX test model, a seeded SAE at resid_out.0 and a seeded transcoder
    (with a skip connection) from mlp_in.1 to mlp_out.1."""
    model = tiny_models["gpt_neox"]
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 24, site="resid_out.0")
    torch.manual_seed(1)
    transcoder = Transcoder(32, 20, skip=True, input_site="mlp_in.1", site="mlp_out.1")
    with torch.no_grad():
        sae.b_enc.uniform_(-0.05, 0.2)
        sae.b_dec.normal_(0, 0.1)
        transcoder.b_enc.uniform_(-0.05, 0.2)
        transcoder.b_dec.normal_(0, 0.1)
        transcoder.W_skip.normal_(0, 0.05)
    dictionaries = {"resid_out.0": sae, "mlp_out.1": transcoder}
    runs = CircuitRuns(model, dictionaries, _ids(), targets=[LogitTarget(TOKEN, positions="all")],
                       settings=RunSettings(progress=False))
    return model, sae, transcoder, runs


def _run(model, layer0=None, mlp=None, grad_at=None, ids=None):
    """Plain torch forward with hooks: ``layer0(out)`` edits block 0's output, ``mlp(x_in,
    out)`` the MLP's output given its input. Returns the MLP's input and output and the
    logits; ``grad_at`` (``"layer0"`` / ``"mlp"``) adds a zero leaf there, returned last."""
    plain = underlying_module(model)
    captured, hooks = {}, []
    leaf = torch.zeros(*_ids().shape, 32, requires_grad=True) if grad_at else None

    def on_layer0(module, args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        if layer0 is not None:
            hidden = layer0(hidden)
        if grad_at == "layer0":
            hidden = hidden + leaf
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def on_mlp(module, args, out):
        if mlp is not None:
            out = mlp(args[0], out)
        if grad_at == "mlp":
            out = out + leaf
        captured["x_in"], captured["y"] = args[0], out
        return out

    hooks.append(plain.get_submodule(LAYER0).register_forward_hook(on_layer0))
    hooks.append(plain.get_submodule(MLP1).register_forward_hook(on_mlp))
    try:
        with torch.set_grad_enabled(grad_at is not None):
            logits = plain(_ids() if ids is None else ids).logits
    finally:
        for handle in hooks:
            handle.remove()
    return captured["x_in"], captured["y"], logits, leaf


def _metric(logits):
    """The target: logit of TOKEN summed over positions, averaged over prompts."""
    return float(logits[..., TOKEN].sum(1).mean())


def _ablate(dictionary, u):
    return lambda out: out - dictionary.encode(out)[..., u:u + 1] * dictionary.directions[u]


@torch.no_grad()
def test_clean_features_are_encoded_at_the_input_site(setup):
    model, _, transcoder, runs = setup
    x_in, y, _, _ = _run(model)
    site = "mlp_out.1"
    assert runs.input_sites[site] == "mlp_in.1"
    assert (runs.features[site] - transcoder.encode(x_in)).abs().max() < TOL
    assert (runs.activations[site] - y).abs().max() < TOL
    # the error node includes the skip term: x = decode(c) + e exactly
    expected_error = y - transcoder.decode(transcoder.encode(x_in))
    assert (runs.errors[site] - expected_error).abs().max() < TOL
    # the old (wrong) reading encoded the output
    assert (transcoder.encode(y) - transcoder.encode(x_in)).abs().max() > 0.1


@torch.no_grad()
def test_acdc_edges_and_effects_match_torch_hooks(setup):
    model, sae, transcoder, runs = setup
    graph = acdc_circuit(runs, tau=0.0, ablation="zero")
    x_clean, y_clean, clean_logits, _ = _run(model)
    c_clean = transcoder.encode(x_clean)
    active0 = runs.active_features("resid_out.0", "zero")
    active1 = runs.active_features("mlp_out.1", "zero")
    assert len(active0) >= 3 and len(active1) >= 3
    checked, gaps = 0, []
    for u in active0[:4]:
        x_ablated, y_ablated, _, _ = _run(model, layer0=_ablate(sae, u))
        for d in active1[:4]:
            expected = float((c_clean[..., d] - transcoder.encode(x_ablated)[..., d])
                             .mean(1).mean())
            wrong = float((transcoder.encode(y_clean)[..., d]
                           - transcoder.encode(y_ablated)[..., d]).mean(1).mean())
            edge = (f"resid_out.0/{u}", f"mlp_out.1/{d}")
            if expected != 0:
                assert graph.has_edge(*edge)
            if graph.has_edge(*edge):
                assert abs(graph.edges[edge]["weight"] - expected) < TOL
                gaps.append(abs(wrong - expected))
                checked += 1
        # the direct edge to the output holds the transcoder's output at its clean value
        _, _, logits, _ = _run(model, layer0=_ablate(sae, u), mlp=lambda x, out: y_clean)
        edge = (f"resid_out.0/{u}", f"output/logit_{TOKEN}")
        assert abs(graph.edges[edge]["weight"] - (_metric(clean_logits) - _metric(logits))) < TOL
    assert checked >= 4
    assert max(gaps) > 0.01  # reading at the output site would give clearly different weights
    for d in active1[:4]:
        def ablate_feature(x, out, d=d):
            return out - transcoder.encode(x)[..., d:d + 1] * transcoder.directions[d]
        _, _, logits, _ = _run(model, mlp=ablate_feature)
        expected = _metric(clean_logits) - _metric(logits)
        edge = (f"mlp_out.1/{d}", f"output/logit_{TOKEN}")
        assert abs(graph.edges[edge]["weight"] - expected) < TOL
        assert abs(graph.nodes[edge[0]]["effect"] - expected) < TOL
    _, _, logits, _ = _run(model, mlp=lambda x, out: transcoder.decode(transcoder.encode(x)))
    effect = graph.nodes["mlp_out.1/error"]["effect"]
    assert abs(effect - (_metric(clean_logits) - _metric(logits))) < TOL
    # without error nodes the circuit has only feature nodes and still matches
    no_errors = acdc_circuit(runs, tau=0.0, ablation="zero", errors=False, node_effects=False)
    assert not any(kind == "error" for _, kind in no_errors.nodes(data="kind"))
    for u, v, w in no_errors.edges(data="weight"):
        assert abs(w - graph.edges[u, v]["weight"]) < TOL


def test_attribution_matches_torch_gradients(setup):
    model, sae, transcoder, runs = setup
    graph = attribution_circuit(runs, tau=0.0, node_tau=0.0, ablation="zero")
    # node effects: (c − 0) · (∂m/∂y · f) with c encoded from the MLP's input
    x_in, y, logits, leaf = _run(model, grad_at="mlp")
    logits[..., TOKEN].sum().backward()
    gradient = leaf.grad
    with torch.no_grad():
        c = transcoder.encode(x_in)
        along = gradient @ transcoder.directions.T                      # [n, T, F]
        effects = (c * along).sum(1).mean(0)
        wrong = (transcoder.encode(y) * along).sum(1).mean(0)
        error_effect = float(((y - transcoder.decode(c)) * gradient).sum(-1).sum(1).mean())
    active1 = runs.active_features("mlp_out.1", "zero")
    for d in active1:
        assert abs(graph.nodes[f"mlp_out.1/{d}"]["effect"] - float(effects[d])) < TOL
    assert float((effects - wrong)[active1].abs().max()) > 0.01
    assert abs(graph.nodes["mlp_out.1/error"]["effect"] - error_effect) < TOL
    # edges resid_out.0/u → mlp_out.1/d: (c_u − 0) · ∂(mean_t c_d)/∂x0 · f_u
    active0 = runs.active_features("resid_out.0", "zero")
    checked, gaps = 0, []
    for d in active1[:3]:
        x_in, y, _, leaf = _run(model, grad_at="layer0")
        right = transcoder.encode(x_in)[..., d].mean(1).sum()
        (g_right,) = torch.autograd.grad(right, [leaf], retain_graph=True)
        (g_wrong,) = torch.autograd.grad(transcoder.encode(y)[..., d].mean(1).sum(), [leaf])
        with torch.no_grad():
            c0 = sae.encode(_layer0_output(model))
            expected = ((c0 * (g_right @ sae.directions.T)).sum(1).mean(0))
            off = ((c0 * (g_wrong @ sae.directions.T)).sum(1).mean(0))
        for u in active0:
            edge = (f"resid_out.0/{u}", f"mlp_out.1/{d}")
            if graph.has_edge(*edge):
                assert abs(graph.edges[edge]["weight"] - float(expected[u])) < TOL
                gaps.append(abs(float(off[u] - expected[u])))
                checked += 1
    assert checked >= 5
    assert max(gaps) > 0.01


@torch.no_grad()
def _layer0_output(model):
    plain = underlying_module(model)
    captured = {}

    def hook(module, args, out):
        captured["h"] = out[0] if isinstance(out, tuple) else out

    handle = plain.get_submodule(LAYER0).register_forward_hook(hook)
    try:
        plain(_ids())
    finally:
        handle.remove()
    return captured["h"]


def _node_set_metric(model, sae, transcoder, keep0, keep1, error0, error1, *, at_output=False):
    """m with every node outside the set zero-ablated (``keep*``: bool feature masks,
    ``error*``: keep the error node), by hooks; ``at_output`` encodes the transcoder from its
    output (the old, wrong reading)."""
    def layer0(out):
        c = sae.encode(out)
        return sae.decode(c * keep0) + (out - sae.decode(c) if error0 else 0)

    def mlp(x, out):
        c = transcoder.encode(out if at_output else x)
        return transcoder.decode(c * keep1) + (out - transcoder.decode(c) if error1 else 0)

    return _metric(_run(model, layer0=layer0, mlp=mlp)[2])


@torch.no_grad()
def test_faithfulness_matches_torch_hooks(setup):
    model, sae, transcoder, runs = setup
    weights = [abs(w) for _, _, w in acdc_circuit(runs, tau=0.0, ablation="zero",
                                                  node_effects=False).edges(data="weight")]
    graph = acdc_circuit(runs, tau=float(torch.tensor(weights).median()), ablation="zero")
    sites = {graph.nodes[n]["site"] for n in graph if graph.nodes[n]["kind"] != "output"}
    assert sites == {"resid_out.0", "mlp_out.1"}
    keep0 = torch.zeros(sae.n_features, dtype=torch.bool)
    keep1 = torch.zeros(transcoder.n_features, dtype=torch.bool)
    error0 = error1 = False
    for node, data in graph.nodes(data=True):
        if data["kind"] == "error":
            error0 |= data["site"] == "resid_out.0"
            error1 |= data["site"] == "mlp_out.1"
        elif data["kind"] == "feature":
            (keep0 if data["site"] == "resid_out.0" else keep1)[data["feature"]] = True
    assert 0 < int(keep1.sum()) < len(runs.active_features("mlp_out.1", "zero"))
    scores = faithfulness(runs, graph, ablation="zero")
    clean = _metric(_run(model)[2])
    none0 = torch.zeros_like(keep0)
    none1 = torch.zeros_like(keep1)
    empty = _node_set_metric(model, sae, transcoder, none0, none1, False, False)
    circuit = _node_set_metric(model, sae, transcoder, keep0, keep1, error0, error1)
    complement = _node_set_metric(model, sae, transcoder, ~keep0, ~keep1, not error0,
                                  not error1)
    assert abs(scores["m_full"] - clean) < 1e-4
    assert abs(scores["m_empty"] - empty) < 1e-4
    assert abs(scores["m_circuit"] - circuit) < 1e-4
    assert abs(scores["m_complement"] - complement) < 1e-4
    assert abs(scores["faithfulness"] - (circuit - empty) / (clean - empty)) < TOL
    assert abs(scores["completeness"] - (1 - (complement - empty) / (clean - empty))) < TOL
    wrong = _node_set_metric(model, sae, transcoder, keep0, keep1, error0, error1,
                             at_output=True)
    assert abs((wrong - empty) / (clean - empty) - scores["faithfulness"]) > 0.05


PAIRS = pd.DataFrame({"clean": ["w1 w2 w3 w4", "w6 w7 w8 w9", "w11 w12 w13 w14"],
                      "corrupt": ["w1 w20 w3 w4", "w6 w21 w8 w9", "w11 w22 w13 w14"],
                      "answer": ["w30", "w31", "w32"], "wrong_answer": ["w40", "w41", "w42"]})


@torch.no_grad()
def test_corrupt_sources_and_positional_edges_read_the_input_site(setup):
    """Corrupt-run sources encode the corrupt run's MLP input; a positional edge from a
    transcoder feature to the logit difference patches the corrupt value in at one
    position of the MLP's output."""
    model, sae, transcoder, _ = setup
    runs = CircuitRuns(model, {"resid_out.0": sae, "mlp_out.1": transcoder}, PAIRS,
                       targets="logit_diff", settings=RunSettings(progress=False))
    clean_ids, corrupt_ids = runs.pairs.clean_ids, runs.pairs.corrupt_ids
    x_corrupt, y_corrupt, _, _ = _run(model, ids=corrupt_ids)
    features, errors = runs.sources("corrupt")
    c_corrupt = transcoder.encode(x_corrupt)
    assert (features["mlp_out.1"] - c_corrupt).abs().max() < TOL
    assert (errors["mlp_out.1"] - (y_corrupt - transcoder.decode(c_corrupt))).abs().max() < TOL
    graph = acdc_circuit(runs, tau=0.0, ablation="corrupt", positional=True, errors=False,
                         node_effects=False)

    def logit_diff(logits):
        last = logits[:, -1]
        rows = torch.arange(len(last))
        return float((last[rows, runs.pairs.answer_ids]
                      - last[rows, runs.pairs.wrong_ids]).mean())

    clean = logit_diff(_run(model, ids=clean_ids)[2])
    assert abs(clean - runs.metric_value) < TOL
    checked = 0
    for u, v, w in graph.edges(data="weight"):
        node = graph.nodes[u]
        if node["site"] != "mlp_out.1" or not v.startswith("output/"):
            continue
        d, position = node["feature"], node["position"]

        def patch(x, out, d=d, position=position):
            change = torch.zeros_like(out)
            change[:, position] = ((c_corrupt - transcoder.encode(x))[:, position, d:d + 1]
                                   * transcoder.directions[d])
            return out + change
        expected = clean - logit_diff(_run(model, mlp=patch, ids=clean_ids)[2])
        assert abs(w - expected) < TOL
        checked += 1
    assert checked >= 3
