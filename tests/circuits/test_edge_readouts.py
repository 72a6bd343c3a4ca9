"""Gradient edges read each copy's own downstream node without dense encodes, and agree with a
plain-torch loop with one backward per downstream node (as feature-circuits computes edges).

``gradient_edges`` stacks one copy of the data per downstream node; each copy reads its own
node at the level. Feature nodes are encoded one encoder row per copy
(``Dictionary.encode_rows``) and only the copies that read the error node encode and decode
every feature. ``_dense_read_nodes`` below is the earlier path (every copy encodes every
feature and computes the error), kept here as the reference the new one must match.
"""

from __future__ import annotations

import pytest
import torch

from featcircuits import load_model
from featcircuits.circuits.attribution import gradient_edges
from featcircuits.circuits.targets import LogitTarget
from featcircuits.dictionaries import SparseAutoencoder
from featcircuits.dictionaries.transcoder import Transcoder
from featcircuits.engine import circuit_trace
from featcircuits.engine.runs import ERROR, CircuitRuns
from tests.support.edge_loop import per_node_edges
from tests.support.factories import QUIET, random_sae

SITES = ("resid_out.0", "attn_out.1", "mlp_out.1", "resid_out.1")


def _dense_read_nodes(readout, x, x_in, dictionary):
    """The reference: per-row readouts encode every feature ``[R, T, F]`` and compute the
    error of every row, then pick each row's node (the path before ``encode_rows``)."""
    assert not readout.full and readout.feature_ids is None and not readout.error
    features = dictionary.encode(x_in)
    error = x - dictionary.decode(features)
    own = readout.own_feature
    index = own.clamp(min=0)[:, None, None].expand(-1, features.shape[1], 1)
    feature_values = torch.gather(features, -1, index).squeeze(-1)
    error_values = (error * readout.error_vector).sum(-1)
    values = torch.where((own >= 0)[:, None], feature_values, error_values)
    return [("own", (values * readout.own_weights).sum(-1))]


def _ids():
    return torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def neox(checkpoint_dirs):
    return load_model(checkpoint_dirs["gpt_neox"])


def _sae(site, seed, activation="relu"):
    """A seeded random SAE (32 → 48) with the given activation; features fire."""
    plain = random_sae(32, site, seed=seed, n_features=48)
    if activation == "relu":
        return plain
    sae = SparseAutoencoder(32, 48, activation=activation,
                            k=6 if activation == "topk" else None, site=site)
    state = plain.state_dict()
    if activation == "jumprelu":
        state["threshold"] = torch.full((48,), 0.08)
    sae.load_state_dict(state)
    return sae


def _dictionaries(kind):
    if kind == "transcoder":
        torch.manual_seed(4)
        transcoder = Transcoder(32, 40, skip=True, input_site="mlp_in.1", site="mlp_out.1")
        with torch.no_grad():
            transcoder.b_enc.uniform_(-0.05, 0.2)
            transcoder.b_dec.normal_(0, 0.1)
            transcoder.W_skip.normal_(0, 0.05)
        return {"resid_out.0": _sae("resid_out.0", 0), "attn_out.1": _sae("attn_out.1", 1),
                "mlp_out.1": transcoder}
    return {site: _sae(site, seed, kind) for seed, site in enumerate(SITES)}


def _active(runs, site, count):
    """The ``count`` most active features at ``site`` (mean over real tokens), no ties."""
    means = runs.features[site].mean((0, 1))
    order = torch.argsort(means, descending=True)[:count]
    assert means[order[-1]] > 1e-3
    return [(site, int(f), None) for f in order]


def level_case(model, kind):
    """``(runs, level, downstream, upstream)``: ``_dictionaries(kind)``, the last site as the
    level, its 4 most active features and error node downstream, 6 + error upstream."""
    dictionaries = _dictionaries(kind)
    runs = CircuitRuns(model, dictionaries, _ids(), targets=LogitTarget(3, minus=4),
                       settings=QUIET)
    level = list(dictionaries)[-1]
    downstream = [*_active(runs, level, 4), (level, ERROR, None)]
    upstream = {s: [*_active(runs, s, 6), (s, ERROR, None)] for s in list(dictionaries)[:-1]}
    return runs, level, downstream, upstream


@pytest.mark.parametrize("kind", ["relu", "jumprelu", "topk", "transcoder"])
def test_own_readouts_match_the_dense_path(neox, kind, monkeypatch):
    runs, level, downstream, upstream = level_case(neox, kind)
    common = {"ablation": "zero", "positional": False}
    fast = gradient_edges(runs, level, downstream, upstream, **common)
    monkeypatch.setattr(circuit_trace, "_read_nodes", _dense_read_nodes)
    dense = gradient_edges(runs, level, downstream, upstream, **common)
    assert fast.keys() == dense.keys()
    scale = max(abs(v) for v in dense.values())
    assert scale > 1e-3   # the edges are not all zero
    # error downstream nodes and features both carry weight
    assert max(abs(v) for (_, d), v in dense.items() if d[1] == ERROR) > 1e-4 * scale
    assert max(abs(v) for (_, d), v in dense.items() if d[1] != ERROR) > 1e-4 * scale
    assert max(abs(fast[k] - dense[k]) for k in dense) < 1e-5 * scale


@pytest.mark.parametrize("level", ["resid_out.1", "mlp_out.1"])
def test_gradient_edges_match_a_per_node_loop(neox, level):
    """One backward per downstream node in plain torch (hooks on the transformers modules,
    feature-circuits' way) gives the batched edges."""
    dictionaries = _dictionaries("relu")
    runs = CircuitRuns(neox, dictionaries, _ids(), targets=LogitTarget(3, minus=4),
                       settings=QUIET)
    downstream = _active(runs, level, 5)
    depth = runs.read_depth(level)
    upstream = {s: [*_active(runs, s, 8), (s, ERROR, None)] for s in SITES
                if runs.depth(s) < depth}
    batched = gradient_edges(runs, level, downstream, upstream, ablation="zero",
                             positional=False)
    with torch.no_grad():   # as benchmarks/scale.py calls it: the loop enables gradients
        looped = per_node_edges(runs, level, downstream, upstream)
    assert batched.keys() == looped.keys()
    scale = max(abs(v) for v in looped.values())
    assert scale > 1e-3
    assert max(abs(batched[k] - looped[k]) for k in looped) < 1e-5 * max(scale, 1.0)
