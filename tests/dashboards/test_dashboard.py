"""Feature dashboards on the bundled model, checked against plain-torch computations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch

from featcircuits.dashboards import (
    OTHER,
    dashboard_html,
    dashboards_for_graph,
    default_texts,
    feature_dashboard_data,
    render_dashboard,
    write_dashboard,
)
from featcircuits.dictionaries import PCABasis, SparseAutoencoder, save_dictionary
from featcircuits.errors import FeatureIdError
from featcircuits.model.loading import load_model, underlying_module
from tests.support.hooks import on_hidden
from tests.support.ranking import assert_top_k

ROOT = Path(__file__).resolve().parents[2]
SITE = "resid_out.2"
LAYER = 2
FEATURE = 3
N_TEXTS = 24


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


@pytest.fixture(scope="module")
def texts():
    return default_texts(N_TEXTS, seed=1)


@pytest.fixture(scope="module")
def hidden(model, texts):
    """Plain torch (no nnsight): per text, token ids ``[T]`` and block-2 output ``[T, d]``."""
    torch_model = underlying_module(model)
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor(model.tokenizer(text)["input_ids"][:64])
            out = torch_model(ids[None], output_hidden_states=True)
            rows.append((ids, out.hidden_states[LAYER + 1][0], out.logits[0]))
    return rows


@pytest.fixture(scope="module")
def sae(hidden):
    """A hand-made ReLU SAE: PCA directions, encoder biases firing on ~15% of tokens."""
    acts = torch.cat([h[1:] for _, h, _ in hidden])
    pca = PCABasis.fit(acts, 16)
    sae = SparseAutoencoder(128, 16, site=SITE)
    with torch.no_grad():
        sae.W_enc.copy_(pca.directions.T)
        sae.W_dec_untied.copy_(pca.directions * 1.5)
        sae.b_dec.copy_(pca.decoder_bias)
        pre = (acts - pca.decoder_bias) @ pca.directions.T
        sae.b_enc.copy_(-pre.quantile(0.85, dim=0))
    return sae


@pytest.fixture(scope="module")
def data(model, sae, texts):
    return feature_dashboard_data(model, sae, SITE, FEATURE, texts=texts, top_k=5,
                                  progress=False)


def _manual_acts(sae, hidden):
    with torch.no_grad():
        return [sae.encode(h)[:, FEATURE] for _, h, _ in hidden]


def test_top_contexts_are_the_max_activations(data, sae, hidden):
    acts = _manual_acts(sae, hidden)  # per text, unbatched: equal up to rounding
    best = {i: float(a[1:].max()) for i, a in enumerate(acts)}
    # the top 5 texts by max activation; near-equal maxima may come in either order
    assert_top_k([c.text_index for c in data.top_contexts], best, 5, tol=1e-4)
    # the library's own order: by its max activation, ties by text index
    assert [(-c.max_activation, c.text_index) for c in data.top_contexts] == sorted(
        (-c.max_activation, c.text_index) for c in data.top_contexts)
    for context in data.top_contexts:
        index = context.text_index
        assert context.max_activation == pytest.approx(best[index], rel=1e-4, abs=1e-4)
        torch.testing.assert_close(torch.tensor(context.activations), acts[index],
                                   rtol=1e-4, atol=1e-4)
        # the max position holds the maximum (of the reference, to rounding), and is the
        # first counted position holding the context's own maximum
        assert 1 <= context.max_position < len(acts[index])
        assert float(acts[index][context.max_position]) >= best[index] - 1e-4
        assert context.max_position == min(
            p for p in range(1, len(context.activations))
            if context.activations[p] == context.max_activation)
        assert len(context.tokens) == len(hidden[index][0])
    assert data.top_contexts[0].max_activation > 0


def test_histogram_counts_equal_nonzero_activations(data, sae, hidden, model):
    acts = _manual_acts(sae, hidden)
    n_nonzero = sum(int((a[1:] != 0).sum()) for a in acts)  # position 0 is BOS: not counted
    assert n_nonzero > 0
    assert len(data.fire_activations) == n_nonzero
    assert sum(sum(c) for c in data.histogram_counts.values()) == n_nonzero
    assert data.n_counted_tokens == sum(len(a) - 1 for a in acts)
    firing_tokens = [model.tokenizer.decode([int(t)]) for (ids, _, _), a in zip(hidden, acts)
                     for t, v in zip(ids[1:], a[1:]) if v != 0]
    for group, counts in data.histogram_counts.items():
        if group != OTHER:
            assert sum(counts) == firing_tokens.count(group)
    assert len(data.histogram_edges) == len(next(iter(data.histogram_counts.values()))) + 1


def test_direct_logit_effect_matches_unembedding(data, sae, model):
    torch_model = underlying_module(model)
    direction = sae.directions[FEATURE].detach()
    norm = torch_model.gpt_neox.final_layer_norm
    with torch.no_grad():
        expected = torch_model.get_output_embeddings().weight @ (
            (direction - direction.mean()) * norm.weight)
    top = torch.topk(expected, 10)
    assert [v for _, v in data.logit_up] == pytest.approx(top.values.tolist(), rel=1e-4)
    bottom = torch.topk(-expected, 10)
    assert [v for _, v in data.logit_down] == pytest.approx((-bottom.values).tolist(), rel=1e-4)
    # the tokens: a valid top/bottom 10 of the reference (near-equal effects in any order)
    by_token = {model.tokenizer.decode([i]): float(v) for i, v in enumerate(expected.tolist())}
    assert len(by_token) == expected.numel()  # token strings are unique
    tol = 1e-4 * float(expected.abs().max())
    assert_top_k([t for t, _ in data.logit_up], by_token, 10, tol=tol)
    assert_top_k([t for t, _ in data.logit_down], by_token, 10, tol=tol, largest=False)
    # the ablation token is the first of logit_up, the largest effect
    assert model.tokenizer.decode([data.ablation_token_id]) == data.logit_up[0][0]
    assert float(expected[data.ablation_token_id]) >= float(expected.max()) - tol


def test_ablation_drop_matches_a_torch_hook(data, sae, model, hidden):
    context = data.top_contexts[0]
    ids, _, clean_logits = hidden[context.text_index]
    torch_model = underlying_module(model)
    direction = sae.directions[FEATURE].detach()

    def hook(_module, _inputs, output):
        c = sae.encode(output)[..., FEATURE]
        return output - c[..., None] * direction

    handle = torch_model.gpt_neox.layers[LAYER].register_forward_hook(on_hidden(hook))
    try:
        with torch.no_grad():
            ablated = torch_model(ids[None]).logits[0]
    finally:
        handle.remove()
    drop = (clean_logits - ablated)[:, data.ablation_token_id]
    fires = [i for i, d in enumerate(context.ablation_drops) if d is not None]
    assert fires and context.max_position in fires
    assert [context.ablation_drops[i] for i in fires] == pytest.approx(drop[fires].tolist(),
                                                                      abs=1e-4)
    assert drop[fires].abs().max() > 1e-3  # the ablation changes something
    assert len(data.ablation_drops) == len(data.fire_activations)


def test_pca_basis_fires_everywhere(model, hidden, texts):
    acts = torch.cat([h[1:] for _, h, _ in hidden])
    pca = PCABasis.fit(acts, 8)
    small = feature_dashboard_data(model, pca, SITE, 0, texts=texts[:6], top_k=3,
                                   logit_token=5, progress=False)
    assert len(small.fire_activations) == small.n_counted_tokens
    assert small.ablation_token_id == 5
    assert len(small.top_contexts) == 3


def test_bad_feature_id(model, sae, texts):
    with pytest.raises(FeatureIdError, match="16"):
        feature_dashboard_data(model, sae, SITE, 16, texts=texts[:2], progress=False)


def test_figure_axes_and_bars(data, tmp_path):
    fig = render_dashboard(data, tmp_path / "dash.png")
    assert (tmp_path / "dash.png").stat().st_size > 10_000
    ax_hist, ax_logit, ax_drop, ax_ctx = fig.axes
    n_bins = len(data.histogram_edges) - 1
    assert len(ax_hist.patches) == n_bins * len(data.histogram_counts)
    assert len(ax_logit.patches) == 20
    assert len(ax_drop.patches) == 30
    assert "activation" in ax_hist.get_xlabel()
    assert ax_ctx.texts  # the context tokens
    write_dashboard(data, tmp_path / "dash.html")
    assert "Feature 3" in (tmp_path / "dash.html").read_text()


def test_html_fragment_is_escaped_and_self_contained(data):
    context = data.top_contexts[0]
    original = context.tokens[context.max_position]
    context.tokens[context.max_position] = "<script>alert('x')</script>&"
    try:
        fragment = dashboard_html(data)
    finally:
        context.tokens[context.max_position] = original
    assert "<script" not in fragment
    assert "&lt;script&gt;" in fragment and "&amp;" in fragment
    assert "http://" not in fragment and "https://" not in fragment
    assert fragment.count("<svg") == 2 and fragment.count("<rect") > 0
    assert "src=" not in fragment and "<link" not in fragment


def test_dashboards_for_graph_feeds_to_html(model, sae, texts):
    from featcircuits.render import to_html

    graph = nx.DiGraph(format_version=1, target="t", metric="m")
    graph.add_node(f"{SITE}/{FEATURE}@3", kind="feature", site=SITE, layer=LAYER,
                   feature=FEATURE, position=3, activation=1.0, effect=0.5, label="")
    graph.add_node(f"{SITE}/{FEATURE}@4", kind="feature", site=SITE, layer=LAYER,
                   feature=FEATURE, position=4, activation=1.0, effect=0.5, label="")
    graph.add_node("resid_out.1/2", kind="feature", site="resid_out.1", layer=1, feature=2,
                   position=None, activation=1.0, effect=0.1, label="")
    graph.add_node("output/m", kind="output", site=None, layer=4, feature=None, position=None,
                   activation=None, effect=1.0, label="")
    graph.add_edge(f"{SITE}/{FEATURE}@3", "output/m", weight=0.5)
    fragments = dashboards_for_graph(model, {SITE: sae}, graph, texts=texts[:6], top_k=3,
                                     progress=False)
    assert set(fragments) == {f"{SITE}/{FEATURE}@3", f"{SITE}/{FEATURE}@4"}
    page = to_html(graph, dashboards=fragments)
    assert f"Feature {FEATURE} at {SITE}" in page


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "featcircuits", *args], cwd=cwd, env=env,
                          check=False,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_dashboard(sae, tmp_path, capsys):
    from featcircuits.cli.main import main

    save_dictionary(sae, tmp_path / "dicts" / SITE)
    result = _cli("dashboard", "--site", SITE, "--feature", str(FEATURE), "--dictionaries",
                  str(tmp_path / "dicts"), "--n-texts", "12", "-o", "f.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "f.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and f"Feature {FEATURE} at {SITE}" in page
    # Error paths in-process (same entry point, without another interpreter start-up).
    code = main(["--quiet", "dashboard", "--site", SITE, "--feature", "999", "--dictionaries",
                 str(tmp_path / "dicts" / SITE), "--n-texts", "4", "-o",
                 str(tmp_path / "g.png")])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 1
    assert len(error_lines) == 1 and "999" in error_lines[0]
    assert not (tmp_path / "g.png").exists()


@pytest.mark.slow
def test_cli_render(tmp_path, capsys):
    from featcircuits.cli.main import main
    from featcircuits.render import example_circuit

    graph_path = tmp_path / "circuit.json"
    graph_path.write_text(json.dumps(nx.node_link_data(example_circuit(), edges="links")))
    result = _cli("render", str(graph_path), "-o", "c.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("c.html", "c.dot", "c.svg"):
        assert main(["render", str(graph_path), "-o", str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 1000
    assert "<svg" in (tmp_path / "c.html").read_text()
    assert main(["render", str(graph_path), "-o", str(tmp_path / "c.jpg")]) == 1
    assert "'.jpg'" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"nodes": [{"id": "a"}], "links": []}')
    assert main(["render", str(tmp_path / "broken.json"), "-o", str(tmp_path / "x.dot")]) == 1
    assert "kind" in capsys.readouterr().err
    (tmp_path / "notjson.json").write_text("{nodes")
    assert main(["render", str(tmp_path / "notjson.json"), "-o", str(tmp_path / "x.dot")]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x.dot").exists()


def _label_graph():
    graph = nx.DiGraph(format_version=1, target="t", metric="m")
    for position in (3, 4):
        graph.add_node(f"{SITE}/{FEATURE}@{position}", kind="feature", site=SITE, layer=LAYER,
                       feature=FEATURE, position=position, activation=1.0, effect=0.5,
                       label="")
    graph.add_node("resid_out.1/2", kind="feature", site="resid_out.1", layer=1, feature=2,
                   position=None, activation=1.0, effect=0.1, label="old")
    graph.add_node("output/m", kind="output", site=None, layer=4, feature=None, position=None,
                   activation=None, effect=1.0, label="")
    graph.add_edge(f"{SITE}/{FEATURE}@3", "output/m", weight=0.5)
    return graph


def test_label_features_names_top_tokens_and_promoted_logits(model, sae, texts, hidden, data):
    from featcircuits.dashboards import label_features

    graph = _label_graph()
    labelled = label_features(graph, model, {SITE: sae}, texts=texts[:8], progress=False)
    # plain torch: the token at each text's maximum, texts ordered by that maximum
    bos = model.tokenizer.bos_token_id
    maxima = []
    for index, ((ids, _, _), acts) in enumerate(zip(hidden[:8], _manual_acts(sae, hidden[:8]))):
        counted = acts.clone()
        if bos is not None and int(ids[0]) == bos:
            counted[0] = -1e9
        position = int(counted.argmax())
        maxima.append((-float(counted[position]), index,
                       model.tokenizer.decode([int(ids[position])]).strip()))
    tokens = []
    for _, _, token in sorted(maxima):
        if token not in tokens:
            tokens.append(token)
    up, down = data.logit_up[0][0].strip(), data.logit_down[0][0].strip()  # texts-independent
    expected = f"{tokens[0]}, {tokens[1]} → ↑{up} ↓{down}"
    for position in (3, 4):
        attrs = labelled.nodes[f"{SITE}/{FEATURE}@{position}"]
        assert attrs["label"] == expected
        assert len(attrs["top_contexts"]) == 3 and "⟦" in attrs["top_contexts"][0]
        assert attrs["logit_up"][0] == data.logit_up[0][0]
    assert labelled.nodes["resid_out.1/2"]["label"] == "old"  # no dictionary there
    assert graph.nodes[f"{SITE}/{FEATURE}@3"]["label"] == ""  # the input is not changed


def test_import_labels_from_neuronpedia_explanations(tmp_path):
    from featcircuits.dashboards import import_labels
    from featcircuits.errors import GraphError
    from featcircuits.render import to_neuronpedia_json

    explanations = [
        {"modelId": "tiny", "layer": "2-res-fc", "index": FEATURE, "description": "names  "},
        {"modelId": "tiny", "layer": "2-res-fc", "index": 99, "description": "not here"},
        {"modelId": "tiny", "layer": "resid_out.1", "index": "2", "description": "commas"},
    ]
    path = tmp_path / "explanations.json"
    path.write_text(json.dumps(explanations))
    labelled = import_labels(_label_graph(), path, layers={"2-res-fc": SITE})
    assert labelled.nodes[f"{SITE}/{FEATURE}@4"]["label"] == "names"
    assert labelled.nodes["resid_out.1/2"]["label"] == "commas"
    assert labelled.graph["imported_labels"] == 3
    clerps = [n["clerp"] for n in to_neuronpedia_json(labelled, slug="t", scan="tiny")["nodes"]]
    assert any(c.startswith("names [") for c in clerps)
    with pytest.raises(GraphError, match="explanation 0"):
        import_labels(_label_graph(), [{"index": 1, "description": "x"}])
