"""Circuits treat a cross-layer transcoder (CLT) feature as one node (engine.carried).

Every number is checked against plain torch forward hooks on the Hugging Face GPT-2 MLPs of
the tiny model (CLT layer L reads mlp_in.L, writes mlp_out.L and every later mlp_out.L'):

* exact node effects (ACDC): ablating (mlp_out.L, f) adds −c_f · W_dec[L → L'] at every
  L' ≥ L; the error node of mlp_out.L' is x − Σ_{L ≤ L'} c_L W_dec[L → L'] − b_dec_L';
* an ACDC edge into the logit holds mlp_out.1 at clean *plus* the carried write;
* attribution: (c − s) · Σ_{L'} g_L' · W_dec[L → L'] against autograd with leaves at both
  MLP outputs; edges likewise with the later output detached;
* node-set faithfulness: an error patched with many sites ablated subtracts the earlier
  layers' live writes; edge-set faithfulness (path patching) assembles CLT sites from every
  layer's writes and ablates an absent edge's feature at every site it writes.
Each check is sharp against the wrong reading that edits only the first written site.
"""

from __future__ import annotations

import pytest
import torch

from featcircuits.circuits.ablation import exact_node_effects, verify_edges
from featcircuits.circuits.attribution import gradient_edges, node_attributions
from featcircuits.circuits.discovery import acdc_circuit
from featcircuits.circuits.faithfulness import (
    EdgeSpec,
    evaluate_edge_specs,
    evaluate_node_sets,
    node_masks,
)
from featcircuits.circuits.nodes import graph_nodes, node_id
from featcircuits.circuits.targets import LogitTarget
from featcircuits.engine.runs import ERROR, CircuitRuns
from featcircuits.errors import DictionaryError
from featcircuits.model.loading import underlying_module
from tests.support.factories import QUIET, random_cross_layer_transcoder, random_sae

TOKEN = 7


@pytest.fixture(scope="module")
def setup(tiny_models):
    model = tiny_models["gpt2"]
    clt = random_cross_layer_transcoder(n_features=10, seed=3)
    ids = torch.randint(1, 60, (3, 6), generator=torch.Generator().manual_seed(5))
    runs = CircuitRuns(model, clt.dictionaries(), ids, targets=[LogitTarget(TOKEN)],
                       settings=QUIET)
    return model, clt, ids, runs, _clean(model, clt, ids)


def _mlps(model):
    plain = underlying_module(model)
    blocks = plain.transformer.h if hasattr(plain, "transformer") else plain.gpt_neox.layers
    return plain, [blocks[layer].mlp for layer in range(2)]


def _clean(model, clt, ids):
    """Plain torch clean run: MLP inputs and outputs, CLT features, errors per output site,
    and the gradient of the summed final-position logits at each MLP output."""
    plain, mlps = _mlps(model)
    store = {"in": {}, "out": {}, "leaf": {}}

    def hook(layer):
        def run(module, args, out):
            store["in"][layer] = args[0].detach()
            store["out"][layer] = out.detach()
            leaf = torch.zeros_like(out, requires_grad=True)
            store["leaf"][layer] = leaf
            return out + leaf
        return run

    hooks = [mlp.register_forward_hook(hook(layer)) for layer, mlp in enumerate(mlps)]
    try:
        logits = plain(ids).logits
    finally:
        for handle in hooks:
            handle.remove()
    total = logits[:, -1, TOKEN].sum()
    grads = torch.autograd.grad(total, [store["leaf"][0], store["leaf"][1]])
    with torch.no_grad():
        features = [clt.layers[layer].encode(store["in"][layer]) for layer in range(2)]
        errors = [store["out"][out] - clt.layers[out].b_dec
                  - sum(clt.layers[read].decode_at(features[read], f"mlp_out.{out}")
                        for read in range(out + 1)) for out in range(2)]
    return {"in": store["in"], "out": store["out"], "features": features, "errors": errors,
            "grads": list(grads), "metric": float(logits[:, -1, TOKEN].detach().mean())}


@torch.no_grad()
def _ablated_metrics(model, ids, edits, frozen=None):
    """Mean final-position logit of each copy ``k`` of the prompts, with ``edits[k][L]``
    ([n, T, d]) added at MLP L's output (one batched forward); ``frozen[L]``: that output
    replaced by it first (then the edit added)."""
    plain, mlps = _mlps(model)
    frozen = frozen or {}
    copies, n = len(edits), len(ids)

    def hook(layer):
        def run(module, args, out):
            stacked = torch.stack([edit.get(layer, torch.zeros_like(out[:n]))
                                   for edit in edits]).reshape(out.shape)
            base = frozen[layer].repeat(copies, 1, 1) if layer in frozen else out
            return base + stacked
        return run

    hooks = [mlp.register_forward_hook(hook(layer)) for layer, mlp in enumerate(mlps)]
    try:
        logits = plain(ids.repeat(copies, 1)).logits
    finally:
        for handle in hooks:
            handle.remove()
    return logits[:, -1, TOKEN].reshape(copies, n).mean(1).tolist()


def _feature_edits(clt, clean, node, *, first_only=False):
    """``{MLP L': −c_f · W_dec[L → L']}`` of zero-ablating feature node ``(mlp_out.L, f)``."""
    site, f, _ = node
    layer = int(site.split(".")[1])
    c = clean["features"][layer][..., f:f + 1]
    outs = [layer] if first_only else range(layer, 2)
    return {out: -c * clt.layers[layer].W_dec[f, out - layer].detach() for out in outs}


def _reference_effects(model, ids, clt, clean, nodes, *, first_only=False):
    edits = []
    for site, f, position in nodes:
        layer = int(site.split(".")[1])
        if f == ERROR:
            edits.append({layer: -clean["errors"][layer]})
        else:
            edits.append(_feature_edits(clt, clean, (site, f, position), first_only=first_only))
    return [clean["metric"] - value for value in _ablated_metrics(model, ids, edits)]


def test_acdc_node_effects_are_exact_ablations_of_every_written_site(setup):
    model, clt, ids, runs, clean = setup
    graph = acdc_circuit(runs, tau=1e-6)
    nodes = graph_nodes(graph)
    layer0 = [node for node in nodes if node[0] == "mlp_out.0" and node[1] != ERROR]
    assert len(layer0) >= 5 and ("mlp_out.1", ERROR, None) in nodes
    assert ("mlp_out.0", ERROR, None) in nodes
    effects = [graph.nodes[node_id(node)]["effect"] for node in nodes]
    expected = _reference_effects(model, ids, clt, clean, nodes)
    assert effects == pytest.approx(expected, abs=1e-5, rel=1e-4)
    wrong = _reference_effects(model, ids, clt, clean, layer0, first_only=True)
    gap = max(abs(graph.nodes[node_id(node)]["effect"] - value)
              for node, value in zip(layer0, wrong))
    assert gap > 1e-2  # editing only mlp_out.0 would be visibly wrong


def test_acdc_edge_to_the_logit_keeps_the_carried_write_on_the_held_site(setup):
    model, clt, ids, runs, clean = setup
    active = runs.active_features("mlp_out.0", "zero")[:6]
    target = runs.targets[0].node_id
    edges = [(("mlp_out.0", f, None), target) for f in active]
    weights = verify_edges(runs, edges, ablation="zero", positional=False)
    nodes = [node for node, _ in edges]
    edits = [_feature_edits(clt, clean, node) for node in nodes]
    frozen = {1: clean["out"][1]}
    held = _ablated_metrics(model, ids, edits, frozen=frozen)
    dropped = _ablated_metrics(model, ids, [{0: edit[0]} for edit in edits], frozen=frozen)
    measured = [weights[edge] for edge in edges]
    assert measured == pytest.approx([clean["metric"] - v for v in held], abs=1e-5, rel=1e-4)
    # a freeze that dropped the carried write would differ
    assert max(abs(w - (clean["metric"] - v)) for w, v in zip(measured, dropped)) > 1e-2


def test_acdc_edge_into_a_later_error_node_subtracts_every_layers_writes(setup):
    """(mlp_out.0, f) → error of mlp_out.1 with mlp_out.1 held: the error read there is
    y1' − c0 W[0→1] − c1' W[1→1] − b1 (the carried write cancels against the ablated
    feature), weighted by the clean gradient g1."""
    model, clt, ids, runs, clean = setup
    plain, mlps = _mlps(model)
    active = runs.active_features("mlp_out.0", "zero")[:4]
    error_node = ("mlp_out.1", ERROR, None)
    weights = verify_edges(runs, [(("mlp_out.0", f, None), error_node) for f in active],
                           ablation="zero", positional=False)

    edits = torch.stack([_feature_edits(clt, clean, ("mlp_out.0", f, None))[0]
                         for f in active])                                  # [k, n, T, d]
    seen = {}

    def grab(module, args, out):
        seen["in"], seen["out"] = args[0], out

    handles = [mlps[0].register_forward_hook(lambda m, a, o: o + edits.reshape(o.shape)),
               mlps[1].register_forward_hook(grab)]
    try:
        with torch.no_grad():
            plain(ids.repeat(len(active), 1))
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        c1 = clt.layers[1].encode(seen["in"])
        errors = (seen["out"] - clt.layers[1].b_dec - clt.layers[1].decode_at(c1, "mlp_out.1")
                  - clt.layers[0].decode_at(clean["features"][0], "mlp_out.1").repeat(
                      len(active), 1, 1))
        values = (errors.reshape(edits.shape) * clean["grads"][1]).sum(-1).mean((-1, -2))
        base = (clean["errors"][1] * clean["grads"][1]).sum(-1).mean()
    measured = [weights[(("mlp_out.0", f, None), error_node)] for f in active]
    assert measured == pytest.approx((base - values).tolist(), abs=1e-5, rel=1e-4)
    assert max(abs(v) for v in measured) > 1e-3  # the edge is not trivially zero


def test_attribution_nodes_sum_the_gradient_over_every_written_site(setup):
    _, clt, _, runs, clean = setup
    effects = node_attributions(runs, ablation="zero")
    c0, (g0, g1) = clean["features"][0], clean["grads"]
    along = (torch.einsum("ntd,fd->ntf", g0, clt.layers[0].W_dec[:, 0].detach())
             + torch.einsum("ntd,fd->ntf", g1, clt.layers[0].W_dec[:, 1].detach()))
    expected = (c0 * along).sum(1).mean(0)
    first_only = (c0 * torch.einsum("ntd,fd->ntf", g0, clt.layers[0].W_dec[:, 0].detach())
                  ).sum(1).mean(0)
    active = runs.active_features("mlp_out.0", "zero")
    assert len(active) >= 5
    for f in active:
        assert effects[("mlp_out.0", f, None)] == pytest.approx(float(expected[f]), abs=1e-5,
                                                                 rel=1e-4)
    gap = max(abs(effects[("mlp_out.0", f, None)] - float(first_only[f])) for f in active)
    assert gap > 1e-2
    for layer in range(2):
        error = float((clean["errors"][layer] * clean["grads"][layer]).sum((-1, -2)).mean())
        assert effects[(f"mlp_out.{layer}", ERROR, None)] == pytest.approx(error, abs=1e-5,
                                                                            rel=1e-4)


def test_attribution_edges_to_the_logit_use_every_written_site(setup):
    model, clt, ids, runs, clean = setup
    plain, mlps = _mlps(model)
    leaves = {}

    def hook(layer):
        def run(module, args, out):
            leaf = torch.zeros_like(out, requires_grad=True)
            leaves[layer] = leaf
            return (out.detach() if layer == 1 else out) + leaf
        return run

    handles = [mlp.register_forward_hook(hook(layer)) for layer, mlp in enumerate(mlps)]
    try:
        logits = plain(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    g0, g1 = torch.autograd.grad(logits[:, -1, TOKEN].sum(), [leaves[0], leaves[1]])
    W = clt.layers[0].W_dec.detach()
    expected = (clean["features"][0] * (torch.einsum("ntd,fd->ntf", g0, W[:, 0])
                                        + torch.einsum("ntd,fd->ntf", g1, W[:, 1]))
                ).sum(1).mean(0)
    active = runs.active_features("mlp_out.0", "zero")
    nodes = [("mlp_out.0", f, None) for f in active]
    weights = gradient_edges(runs, None, [0], {"mlp_out.0": nodes}, ablation="zero",
                             positional=False)
    target = runs.targets[0].node_id
    for node in nodes:
        assert weights[(node, target)] == pytest.approx(float(expected[node[1]]), abs=1e-5,
                                                        rel=1e-4)


def _path_gradients(model, ids, clt, clean, alphas, *, held):
    """Plain autograd along the integrated-gradient path of mlp_out.0 (zero ablation):
    MLP 0's output is clean0 − α (clean0 − b_dec_0), MLP 1's gets −α c0 @ W_dec[0 → 1] added
    (to the clean value when ``held``). Returns the gradients at both outputs averaged over
    the points."""
    plain, mlps = _mlps(model)
    totals = [0.0, 0.0]
    carried = clt.layers[0].decode_at(clean["features"][0], "mlp_out.1").detach()
    source0 = clt.layers[0].b_dec.detach()
    for alpha in alphas:
        leaves = [torch.zeros_like(clean["out"][layer], requires_grad=True) for layer in range(2)]

        def first(module, args, out, alpha=alpha, leaves=leaves):
            return clean["out"][0] - alpha * (clean["out"][0] - source0) + leaves[0]

        def second(module, args, out, alpha=alpha, leaves=leaves):
            return (clean["out"][1] if held else out) - alpha * carried + leaves[1]

        handles = [mlps[0].register_forward_hook(first), mlps[1].register_forward_hook(second)]
        try:
            logits = plain(ids).logits
        finally:
            for handle in handles:
                handle.remove()
        grads = torch.autograd.grad(logits[:, -1, TOKEN].sum(), leaves)
        totals = [total + grad for total, grad in zip(totals, grads)]
    return [total / len(alphas) for total in totals]


def _estimates(clt, clean, g0, g1):
    W = clt.layers[0].W_dec.detach()
    return (clean["features"][0] * (torch.einsum("ntd,fd->ntf", g0, W[:, 0])
                                    + torch.einsum("ntd,fd->ntf", g1, W[:, 1]))).sum(1).mean(0)


def test_integrated_gradients_move_every_written_site_along_the_path(setup):
    model, clt, ids, runs, clean = setup
    active = runs.active_features("mlp_out.0", "zero")
    nodes = [("mlp_out.0", f, None) for f in active]
    effects = node_attributions(runs, method="ig", steps=2)
    g0, g1 = _path_gradients(model, ids, clt, clean, [0.25, 0.75], held=False)
    expected = _estimates(clt, clean, g0, g1)
    assert [effects[node] for node in nodes] == pytest.approx(
        [float(expected[f]) for f in active], abs=1e-5, rel=1e-4)
    # the estimate without the gradient at the later written site would differ
    alone = _estimates(clt, clean, g0, torch.zeros_like(g1))
    assert max(abs(effects[node] - float(alone[node[1]])) for node in nodes) > 1e-2

    weights = gradient_edges(runs, None, [0], {"mlp_out.0": nodes}, ablation="zero",
                             positional=False, method="ig", steps=2)
    g0, g1 = _path_gradients(model, ids, clt, clean, [0.25, 0.75], held=True)
    expected = _estimates(clt, clean, g0, g1)
    target = runs.targets[0].node_id
    assert [weights[(node, target)] for node in nodes] == pytest.approx(
        [float(expected[f]) for f in active], abs=1e-5, rel=1e-4)


def test_edge_set_faithfulness_ablates_an_absent_edge_at_every_written_site(setup):
    """Every node kept, the edge (mlp_out.0, f) → logit absent: the logit is read from a
    run with both MLP outputs at their clean values except f's source (zero) at both
    written sites — the ACDC reading of that edge."""
    model, clt, ids, runs, clean = setup
    active = runs.active_features("mlp_out.0", "zero")[:3]
    specs = [EdgeSpec(kept=_all_kept(runs),
                      ablated_into={0: node_masks(runs, [("mlp_out.0", f, None)], sparse=True)})
             for f in active]
    measured = evaluate_edge_specs(runs, specs).tolist()
    edits = [_feature_edits(clt, clean, ("mlp_out.0", f, None)) for f in active]
    expected = _ablated_metrics(model, ids, edits, frozen={1: clean["out"][1]})
    assert measured == pytest.approx(expected, abs=1e-5, rel=1e-4)
    dropped = _ablated_metrics(model, ids, [{0: edit[0]} for edit in edits],
                               frozen={1: clean["out"][1]})
    assert max(abs(m - d) for m, d in zip(measured, dropped)) > 1e-2


def _all_kept(runs):
    return {site: torch.ones(runs.width, runs.dictionaries[site].n_features + 1,
                             dtype=torch.bool, device=runs.device) for site in runs.sites}


def test_runs_need_every_written_site(tiny_models):
    clt = random_cross_layer_transcoder()
    with pytest.raises(DictionaryError, match=r"(?s)also writes \['mlp_out.1'\].*no dictionary"):
        CircuitRuns(tiny_models["gpt2"], {"mlp_out.0": clt.layers[0]}, [[1, 2, 3, 4]],
                    targets=[LogitTarget(5)], settings=QUIET)


def test_node_set_faithfulness_patches_the_live_error_of_a_later_site(tiny_models):
    """Every SAE feature at resid_in.0 ablated and the error of mlp_out.1 ablated, every
    other node kept: mlp_out.1 becomes c0' W[0→1] + c1' W[1→1] + b1 with the *live*
    features c0', c1' of that pass (layer 0's differ from the clean ones, since its input
    changed); an error taken with the clean writes of layer 0 would differ."""
    model = tiny_models["gpt2"]
    clt = random_cross_layer_transcoder(n_features=10, seed=3)
    sae = random_sae(32, "resid_in.0", n_features=12)
    ids = torch.randint(1, 60, (3, 6), generator=torch.Generator().manual_seed(5))
    runs = CircuitRuns(model, {"resid_in.0": sae, **clt.dictionaries()}, ids,
                       targets=[LogitTarget(TOKEN)], settings=QUIET)
    kept = ([("resid_in.0", ERROR, None), ("mlp_out.0", ERROR, None)]
            + [(f"mlp_out.{layer}", f, None) for layer in range(2) for f in range(10)])
    (measured,) = evaluate_node_sets(runs, [node_masks(runs, kept)]).tolist()
    # every edge between the kept nodes present: the edge evaluation is the node evaluation
    (by_edges,) = evaluate_edge_specs(runs, [EdgeSpec(kept=node_masks(runs, kept))]).tolist()

    plain, mlps = _mlps(model)
    clean = _clean(model, clt, ids)
    seen = {}

    def ablate_sae(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x = x - sae.encode(x) @ sae.directions
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    def grab0(module, args, out):
        seen[0] = clt.layers[0].encode(args[0])

    def rebuild1(module, args, out):
        c1 = clt.layers[1].encode(args[0])
        return (clt.layers[0].decode_at(seen[0], "mlp_out.1")
                + clt.layers[1].decode_at(c1, "mlp_out.1") + clt.layers[1].b_dec)

    handles = [plain.transformer.h[0].register_forward_pre_hook(ablate_sae, with_kwargs=True),
               mlps[0].register_forward_hook(grab0), mlps[1].register_forward_hook(rebuild1)]
    try:
        with torch.no_grad():
            expected = float(plain(ids).logits[:, -1, TOKEN].mean())
            seen_live = seen[0]
            seen[0] = clean["features"][0]  # the wrong reading: layer 0's clean writes
            handles[1].remove()
            wrong = float(plain(ids).logits[:, -1, TOKEN].mean())
    finally:
        for handle in handles:
            handle.remove()
    assert (seen_live - clean["features"][0]).abs().max() > 1e-2
    assert measured == pytest.approx(expected, abs=1e-5, rel=1e-4)
    assert by_edges == pytest.approx(expected, abs=1e-5, rel=1e-4)
    assert abs(measured - wrong) > 1e-2


def test_a_carried_write_reaches_past_a_held_whole_state_site(setup):
    """With an SAE at resid_out.0 (the whole state, held clean for edges), layer 0's
    features still reach the logit directly through their write to mlp_out.1: the ACDC
    edge is the metric with mlp_out.1 = clean + carried, the attribution edge
    c0 · (g1 · W_dec[0 → 1])."""
    model, clt, ids, _, clean = setup
    runs = CircuitRuns(model, {"resid_out.0": random_sae(32, "resid_out.0", n_features=12),
                               **clt.dictionaries()}, ids, targets=[LogitTarget(TOKEN)],
                       settings=QUIET)
    active = runs.active_features("mlp_out.0", "zero")[:5]
    nodes = [("mlp_out.0", f, None) for f in active]
    target = runs.targets[0].node_id
    exact = verify_edges(runs, [(node, target) for node in nodes], ablation="zero",
                         positional=False)
    edits = [{1: _feature_edits(clt, clean, node)[1]} for node in nodes]
    expected = [clean["metric"] - value for value in _ablated_metrics(model, ids, edits)]
    assert [exact[(node, target)] for node in nodes] == pytest.approx(expected, abs=1e-5,
                                                                      rel=1e-4)
    assert max(abs(value) for value in expected) > 1e-2
    estimated = gradient_edges(runs, None, [0], {"mlp_out.0": nodes}, ablation="zero",
                               positional=False)
    along = torch.einsum("ntd,fd->ntf", clean["grads"][1], clt.layers[0].W_dec[:, 1].detach())
    expected = (clean["features"][0] * along).sum(1).mean(0)
    assert [estimated[(node, target)] for node in nodes] == pytest.approx(
        [float(expected[f]) for f in active], abs=1e-5, rel=1e-4)


def test_exact_node_effects_on_gpt_neox(tiny_models):
    """The same exact ablations on GPT-NeoX (parallel attention and MLP)."""
    model = tiny_models["gpt_neox"]
    clt = random_cross_layer_transcoder(n_features=8, seed=6)
    ids = torch.randint(1, 60, (2, 5), generator=torch.Generator().manual_seed(2))
    runs = CircuitRuns(model, clt.dictionaries(), ids, targets=[LogitTarget(TOKEN)],
                       settings=QUIET)
    clean = _clean(model, clt, ids)
    nodes = ([("mlp_out.0", f, None) for f in runs.active_features("mlp_out.0", "zero")]
             + [("mlp_out.0", ERROR, None), ("mlp_out.1", ERROR, None)])
    effects = exact_node_effects(runs, nodes, ablation="zero", positional=False)
    assert [effects[node] for node in nodes] == pytest.approx(
        _reference_effects(model, ids, clt, clean, nodes), abs=1e-5, rel=1e-4)
    features = nodes[:-2]
    wrong = _reference_effects(model, ids, clt, clean, features, first_only=True)
    assert max(abs(effects[node] - value) for node, value in zip(features, wrong)) > 1e-3
