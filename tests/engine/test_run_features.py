"""CircuitRuns keeps no ``[n, T, n_features]`` tensor: the clean run's features and every
ablation's sources are encoded when read (engine/run_features.py), and circuits found that
way equal those found with dense features held in memory (the former design)."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch

from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit
from featcircuits.engine.runs import ABLATIONS, CircuitRuns
from featcircuits.engine.settings import RunSettings
from tests.support.factories import PROMPTS, QUIET, random_sae

SITES = ("resid_out.0", "mlp_out.1", "resid_out.1")
PAIRS = pd.concat([PROMPTS] * 2, ignore_index=True)  # 8 pairs of 4-5 tokens


def _saes(n_features: int, sites=SITES) -> dict:
    return {site: random_sae(32, site, seed=seed, n_features=n_features)
            for seed, site in enumerate(sites)}


def _kept_storages(root) -> dict[int, int]:
    """``{storage pointer: bytes}`` of every tensor reachable from ``root`` through
    featcircuits objects, containers and closures (the model and dictionaries excluded)."""
    seen: set[int] = set()
    storages: dict[int, int] = {}
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, torch.nn.Module):
            continue
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
        elif isinstance(item, types.FunctionType):
            stack.extend(cell.cell_contents for cell in item.__closure__ or ())
        elif type(item).__module__.startswith("featcircuits") and hasattr(item, "__dict__"):
            stack.extend(value for key, value in vars(item).items()
                         if key not in ("model", "dictionaries"))
    return storages


def _exercised(model, n_features: int) -> CircuitRuns:
    """Runs with every ablation's sources, active features and node scales computed (a
    2 MB budget: the 4,096-feature scans run one prompt and all features at a time)."""
    runs = CircuitRuns(model, _saes(n_features, SITES[:2]), PAIRS, targets="logit_diff",
                       settings=RunSettings(progress=False, max_memory="2MB"))
    for ablation in ABLATIONS:
        runs.active_features("mlp_out.1", ablation, positional=ablation == "position_mean")
    runs.source_activation("mlp_out.1", "corrupt")
    runs.node_scale(("mlp_out.1", 0, None))
    runs.node_scale(("mlp_out.1", 0, 1))
    return runs


def test_runs_keep_no_dense_features(tiny_models):
    model = tiny_models["gpt_neox"]
    small, big = _exercised(model, 64), _exercised(model, 4096)
    n, width = big.n, big.width
    kept = {64: _kept_storages(small), 4096: _kept_storages(big)}
    dense = 4 * n * width * 4096                         # one site's float32 features
    assert max(kept[4096].values()) < dense / 4
    # what grows with the dictionary: per site [F] means and scales, [T, F] position means
    # and positional scales (float32), [F] / [T, F] bool active-feature tables per
    # ablation: not n T per source
    growth = sum(kept[4096].values()) - sum(kept[64].values())
    per_feature = 4 * (2 * width + 2) * 2 + (width + 1) * len(ABLATIONS)
    assert 0 < growth <= per_feature * (4096 - 64)
    assert growth < 4 * n * width * (4096 - 64)          # less than ONE site's dense features
    # nbytes counts what is kept (all but token ids, masks, target weights: O(n T))
    for runs, storages in ((small, kept[64]), (big, kept[4096])):
        assert runs.nbytes <= sum(storages.values()) <= runs.nbytes + 64 * n * width
    # the blockwise scans equal plain torch on the dense features
    with torch.no_grad():
        clean = big.dictionaries["mlp_out.1"].encode(big.input_activations["mlp_out.1"])
    real = big.token_mask.bool()
    torch.testing.assert_close(big.sources("mean")[0]["mlp_out.1"][3, 2], clean[real].mean(0),
                               rtol=1e-5, atol=1e-6)
    assert big.active_features("mlp_out.1", "zero") == torch.nonzero(
        clean[real].abs().amax(0) > 0).flatten().tolist()
    assert big.node_scale(("mlp_out.1", 7, None)) == pytest.approx(
        float((clean[..., 7].abs() * big.node_weights).sum(1).mean()), rel=1e-5)
    # the check sees dense features where they are kept
    big.features["resid_out.0"] = big.features["resid_out.0"].clone()
    assert max(_kept_storages(big).values()) >= dense


def _dense_reference(model, saes) -> CircuitRuns:
    """Runs whose features and sources are dense ``[n, T, F]`` tensors held in plain dicts,
    computed here with plain torch (as CircuitRuns kept them before)."""
    runs = CircuitRuns(model, saes, PROMPTS, targets="logit_diff", settings=QUIET)
    sites = runs.sites
    tm = runs.token_mask
    real = tm.bool()
    with torch.no_grad():
        features = {s: saes[s].encode(runs.input_activations[s]) for s in sites}
        errors = {s: runs.activations[s] - saes[s].decode(features[s]) for s in sites}
        x_corrupt, corrupt_inputs = runs.run_corrupt()
        corrupt = {s: saes[s].encode(corrupt_inputs[s]) for s in sites}
    counts = tm.sum(0)[:, None]

    def position_mean(values):
        means = (values * tm[..., None]).sum(0) / counts.clamp(min=1)
        overall = values[real].mean(0)
        return torch.where(counts > 0, means, overall).expand_as(values)

    sources = {
        "zero": ({s: torch.zeros_like(features[s]) for s in sites},
                 {s: torch.zeros_like(errors[s]) for s in sites}),
        "mean": ({s: features[s][real].mean(0).expand_as(features[s]) for s in sites},
                 {s: errors[s][real].mean(0).expand_as(errors[s]) for s in sites}),
        "position_mean": ({s: position_mean(features[s]) for s in sites},
                          {s: position_mean(errors[s]) for s in sites}),
        "corrupt": (corrupt, {s: x_corrupt[s] - saes[s].decode(corrupt[s]) for s in sites}),
    }
    runs.features, runs.errors = features, errors
    runs.sources = sources.__getitem__
    return runs


def _weights(graph) -> dict:
    return {(u, v): w for u, v, w in graph.edges(data="weight")}


@pytest.mark.parametrize(("method", "ablation"), [("attribution", "position_mean"),
                                                  ("acdc", "corrupt")])
def test_circuits_match_dense_features(tiny_models, method, ablation):
    """attribution and ACDC on encoded-on-demand features equal the dense reference: same
    nodes, node activations and scales (relative thresholds), and edge weights (every
    edge: tau = 0, so no edge sits at a threshold)."""
    model = tiny_models["gpt_neox"]
    saes = _saes(16, ("resid_out.0", "resid_out.1"))
    lean = CircuitRuns(model, saes, PROMPTS, targets="logit_diff", settings=QUIET)
    dense = _dense_reference(model, saes)
    circuit = attribution_circuit if method == "attribution" else acdc_circuit
    got, want = (circuit(runs, tau=0.0, relative_tau=True, ablation=ablation)
                 for runs in (lean, dense))
    assert want.number_of_edges() > 200
    # tau = 0 keeps every nonzero weight: an edge whose exact weight is 0 may come out as
    # +-1e-9 in one run and 0 in the other, so absent edges count as weight 0
    got_w, want_w = _weights(got), _weights(want)
    scale = max(abs(w) for w in want_w.values())
    for edge in set(got_w) | set(want_w):
        assert got_w.get(edge, 0.0) == pytest.approx(want_w.get(edge, 0.0), abs=1e-5 * scale)
    assert len(set(got_w) ^ set(want_w)) <= 0.01 * len(want_w)
    for node, data in want.nodes(data=True):
        if node not in got:
            continue
        for key in ("activation", "scale"):
            if data.get(key) is not None:
                assert got.nodes[node][key] == pytest.approx(data[key], rel=1e-5, abs=1e-7)
    assert len(set(got.nodes) ^ set(want.nodes)) <= 2


@pytest.mark.parametrize("ablation", ["zero", "mean", "position_mean", "resample"])
def test_source_activation_equals_decoding_every_prompt(tiny_models, ablation):
    """Sources the same at every prompt (zero, mean, position_mean) are decoded once and
    expanded; that equals decoding the dense ``[n, T, F]`` source prompt by prompt (and a
    per-prompt source still decodes each prompt)."""
    model = tiny_models["gpt_neox"]
    runs = CircuitRuns(model, _saes(64, SITES[:2]), PAIRS, targets="logit_diff",
                       settings=QUIET)
    features, errors = runs.sources(ablation)
    assert (features.shared("mlp_out.1") is None) == (ablation == "resample")
    dense = features["mlp_out.1"].clone()                         # [n, T, F]
    assert dense.shape == (runs.n, runs.width, 64)
    with torch.no_grad():
        want = runs.dictionaries["mlp_out.1"].decode(dense) + errors["mlp_out.1"]
    got = runs.source_activation("mlp_out.1", ablation)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if ablation == "position_mean":   # positions differ: not one vector expanded
        assert not torch.allclose(got[0, 0], got[0, 1])
    got[0, 0, 0] = 1e6                 # its own tensor, not a view of a shared one
    assert runs.source_activation("mlp_out.1", ablation)[1, 0, 0] != 1e6
