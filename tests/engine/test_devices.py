"""Devices and dtypes without a GPU: circuits on a bfloat16 model (every value written back
into the model must keep its dtype — the CPU's LayerNorm refuses mixed dtypes), dictionaries
on another device or dtype than the model are refused, and a source check that the circuit
modules create no tensor without ``device=``."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch

from featcircuits import DictionaryError, load_model
from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit, node_attributions
from featcircuits.circuits.faithfulness import faithfulness
from featcircuits.circuits.targets import FeatureTarget, LogitTarget
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.engine.runs import ERROR, CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.model.loading import to_model
from featcircuits.model.sites import Site
from tests.support.factories import random_saes

ROOT = Path(__file__).resolve().parents[2]


def _ids(n=4, t=6, seed=3):
    return torch.randint(0, 60, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def both(checkpoint_dirs):
    """The same GPT-NeoX and dictionaries in float32 and in bfloat16."""
    path = checkpoint_dirs["gpt_neox"]
    saes = random_saes()
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(path, dtype=dtype)
        dictionaries = {"embed": TokenBasis.from_model(model)}
        dictionaries.update({s: to_model(copy.deepcopy(d), model) for s, d in saes.items()})
        out[dtype] = (model, dictionaries)
    return out


def _runs(model, dictionaries, **kwargs):
    targets = [LogitTarget(9, positions="all"), FeatureTarget("resid_out.1", 3)]
    return CircuitRuns(model, dictionaries, _ids(), targets=targets,
                       settings=RunSettings(progress=False), **kwargs)


def test_token_basis_takes_the_models_dtype(both):
    model, dictionaries = both["bfloat16"]
    tokens = dictionaries["embed"]
    assert tokens.embedding.dtype == torch.bfloat16
    with model.trace(_ids()):
        embedded = Site.parse("embed").read(model).save()
    assert torch.equal(tokens.encode(embedded).argmax(-1), _ids())
    assert tokens.decode(tokens.encode(embedded)).dtype == torch.bfloat16
    assert float(tokens.error(embedded).detach().abs().max()) == 0.0


def test_bfloat16_circuits_follow_float32(both):
    runs = {dtype: _runs(*both[dtype]) for dtype in both}
    low, full = runs["bfloat16"], runs["float32"]
    assert low.activations["resid_out.0"].dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in low.gradients.values())
    assert low.target_values.dtype == torch.float32
    assert low.metric_value == pytest.approx(full.metric_value, rel=0.05, abs=0.05)
    for method in ("attribution", "ig"):
        effects = {d: node_attributions(runs[d], ablation="mean", method=method, steps=2)
                   for d in runs}
        assert effects["bfloat16"].keys() == effects["float32"].keys()
        scale = max(abs(v) for v in effects["float32"].values())
        assert scale > 1e-3
        for node, value in effects["float32"].items():
            assert effects["bfloat16"][node] == pytest.approx(value, abs=0.1 * scale), node
    # the features and error node of a site add up to the site's whole effect in bf16 too
    errors = [v for (site, f, _), v in effects["bfloat16"].items() if f == ERROR]
    assert errors and all(torch.isfinite(torch.tensor(errors)))
    for ablation in ("mean", "resample", "position_mean"):
        graph = acdc_circuit(low, tau=0.02, ablation=ablation, relative_tau=True)
        assert graph.number_of_edges() > 0, ablation
        reference = acdc_circuit(full, tau=0.02, ablation=ablation, relative_tau=True)
        weights = {(u, v): w for u, v, w in reference.edges(data="weight")}
        scale = max(abs(w) for w in weights.values())
        shared = [(u, v, w) for u, v, w in graph.edges(data="weight") if (u, v) in weights]
        assert len(shared) >= 0.5 * len(weights), ablation
        for u, v, w in shared:  # exact weights are differences of bf16-rounded readings
            assert w == pytest.approx(weights[(u, v)], abs=0.25 * scale), (ablation, u, v)
    graph = attribution_circuit(low, tau=0.05, relative_tau=True, ablation="mean")
    scores = {d: faithfulness(runs[d], graph, ablation="mean") for d in runs}
    for ablation in ("mean", "position_mean"):  # nodes and edges agree on m(empty)
        node_scores = faithfulness(low, graph, ablation=ablation)
        edge_scores = faithfulness(low, graph, ablation=ablation, edges=True)
        assert edge_scores["m_empty"] == pytest.approx(node_scores["m_empty"], abs=0.05)
    assert scores["bfloat16"]["m_full"] == pytest.approx(scores["float32"]["m_full"], rel=0.05,
                                                          abs=0.05)
    assert scores["bfloat16"]["faithfulness"] == pytest.approx(
        scores["float32"]["faithfulness"], abs=0.1)
    # integrated-gradient edges interpolate in float32 and write the model's dtype back
    ig = {d: attribution_circuit(runs[d], tau=0.05, relative_tau=True, ablation="mean",
                                 method="ig", steps=2, max_nodes=4) for d in runs}
    weights = {(u, v): w for u, v, w in ig["float32"].edges(data="weight")}
    assert weights
    scale = max(abs(w) for w in weights.values())
    shared = [(u, v, w) for u, v, w in ig["bfloat16"].edges(data="weight") if (u, v) in weights]
    assert len(shared) >= 0.5 * len(weights)
    for u, v, w in shared:
        assert w == pytest.approx(weights[(u, v)], abs=0.25 * scale), (u, v)


def test_dictionaries_elsewhere_are_refused(both):
    model, dictionaries = both["float32"]
    moved = dict(dictionaries, **{"resid_out.0": copy.deepcopy(dictionaries["resid_out.0"]).to(
        "meta")})
    with pytest.raises(DictionaryError, match=r"(?s)resid_out\.0 is on meta.*to_model"):
        _runs(model, moved)
    low_model, _ = both["bfloat16"]
    with pytest.raises(DictionaryError, match=r"float32 but the model is on cpu in "
                       r"torch\.bfloat16"):
        _runs(low_model, {"resid_out.0": dictionaries["resid_out.0"]})


# ------------------------------------------------------------------ source check
FACTORIES = {"zeros", "ones", "full", "empty", "arange", "tensor", "as_tensor", "randperm",
             "randint", "rand", "randn", "linspace", "eye"}
# functions whose new tensors are CPU bookkeeping by design (moved to the model's device by
# their callers, or never combined with model tensors)
CPU_BY_DESIGN = {"read_inputs", "_read_inputs", "parens_data", "_collect", "collect_site", "_ablation_drops"}
CHECKED = sorted(str(path.relative_to(ROOT / "featcircuits"))
                 for folder in ("engine", "circuits", "experiments", "dashboards")
                 for path in (ROOT / "featcircuits" / folder).glob("*.py"))


@pytest.mark.parametrize("name", CHECKED)
def test_new_tensors_name_their_device(name):
    tree = ast.parse((ROOT / "featcircuits" / name).read_text())
    missing = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and node.func.attr in FACTORIES and function not in CPU_BY_DESIGN
                and not any(k.arg == "device" for k in node.keywords)):
            missing.append(f"{name}:{node.lineno} torch.{node.func.attr} in {function}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    assert not missing, "new tensors without device=: " + "; ".join(missing)


def test_training_saves_float32_weights_after_a_bf16_evaluation(both, tmp_path, capsys):
    import argparse

    from featcircuits.cli.commands_train import finish_training
    from featcircuits.dictionaries import PCABasis, load_dictionary

    model, _ = both["bfloat16"]
    torch.manual_seed(0)
    basis = PCABasis.fit(torch.randn(200, 32), site="resid_out.1")
    trained = basis.directions.clone()
    assert not torch.equal(trained.bfloat16().float(), trained)  # bf16 would round them
    args = argparse.Namespace(site="resid_out.1", n_ctx=8, quiet=True, seed=0, device="cpu",
                              out=str(tmp_path / "pca"))
    stats = finish_training(model, basis, args, ["w1 w2 w3 w4", "w5 w6 w7"], {"method": "pca"})
    assert stats["variance_explained"] == pytest.approx(1.0, abs=0.05)  # a full basis, bf16
    saved = load_dictionary(tmp_path / "pca")
    assert saved.directions.dtype == torch.float32
    assert torch.equal(saved.directions, trained)
