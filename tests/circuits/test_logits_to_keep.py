"""Output targets unembed only the positions they read (Hugging Face ``logits_to_keep``):
the same circuit values as with full-sequence logits, and the unembedding really runs on
those positions only where the model's forward takes the argument."""

from __future__ import annotations

import inspect

import pytest
import torch

from featcircuits.circuits import LogitTarget, circuit_runs
from featcircuits.circuits.attribution import node_attributions
from featcircuits.dictionaries import RandomBasis
from featcircuits.engine import RunSettings, circuit_trace
from featcircuits.model.loading import underlying_module


def _ig_effects(model, ids):
    dictionary = {"resid_out.0": RandomBasis(32, n_features=16, site="resid_out.0", seed=1)}
    runs = circuit_runs(model, dictionary, ids, targets=LogitTarget(3, minus=5, positions="final"),
                        settings=RunSettings(progress=False))
    return runs.metric_value, node_attributions(runs, ablation="zero", method="ig", steps=3)


@pytest.mark.parametrize("name", ["gpt_neox", "gpt2", "llama"])
def test_output_targets_unembed_only_their_positions(tiny_models, name, monkeypatch):
    model = tiny_models[name]
    ids = torch.randint(2, 60, (3, 6), generator=torch.Generator().manual_seed(4))
    shapes: list[tuple[int, ...]] = []
    head = underlying_module(model).get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: shapes.append(out.shape))
    try:
        kept_metric, kept = _ig_effects(model, ids)
        kept_shapes = list(shapes)
        monkeypatch.setattr(circuit_trace, "_logit_positions", lambda *args: None)
        shapes.clear()
        full_metric, full = _ig_effects(model, ids)
    finally:
        handle.remove()
    assert all(shape[1] == 6 for shape in shapes)  # the reference ran full-sequence logits
    assert kept_metric == pytest.approx(full_metric, abs=1e-6)
    assert kept.keys() == full.keys()
    assert max(abs(kept[k] - full[k]) for k in kept) < 1e-5
    if "logits_to_keep" in inspect.signature(underlying_module(model).forward).parameters:
        assert kept_shapes and all(shape[1] == 1 for shape in kept_shapes), kept_shapes
