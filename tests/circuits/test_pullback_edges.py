"""Edges into a feature level by one forward pass and batched vector-Jacobian products
(``engine.pullback``) equal the per-copy passes (one copy of the data per downstream node).

Every architecture, every dictionary kind whose node values differ (ReLU, JumpReLU, TopK
read with every feature encoded, a transcoder read at its input site), feature and error
nodes up- and downstream, and a level the pullback reaches through a transformer block
(``attn_out``/``mlp_out``) or only through the residual additions (``resid_out``).
"""

from __future__ import annotations

import pytest
import torch

from featcircuits.circuits import attribution
from featcircuits.circuits.attribution import gradient_edges
from featcircuits.circuits.targets import LogitTarget
from featcircuits.engine import pullback
from featcircuits.engine.runs import ERROR, CircuitRuns
from tests.circuits.test_edge_readouts import _active, _dictionaries, _ids, level_case
from tests.support.factories import QUIET, random_sae

LEVELS = ("attn_out.1", "mlp_out.1", "resid_out.1")


def _both(runs, level, downstream, upstream, monkeypatch):
    """``gradient_edges`` by pullback (asserted to have run) and by per-copy passes."""
    calls = []
    original = pullback.level_pullbacks

    def counted(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    common = {"ablation": "zero", "positional": False}
    with monkeypatch.context() as patch:
        patch.setattr(attribution, "level_pullbacks", counted)
        pulled = gradient_edges(runs, level, downstream, upstream, **common)
    assert calls == [level]
    with monkeypatch.context() as patch:
        patch.setattr(attribution, "pullback_possible", lambda *args: False)
        copied = gradient_edges(runs, level, downstream, upstream, **common)
    return pulled, copied


def _assert_equal(pulled, copied):
    assert pulled.keys() == copied.keys() and copied
    scale = max(abs(v) for v in copied.values())
    assert scale > 1e-4   # the edges are not all zero
    assert max(abs(pulled[k] - copied[k]) for k in copied) <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2", "llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("level", LEVELS)
def test_pullback_equals_one_copy_per_node(tiny_models, arch, level, monkeypatch):
    sites = ("resid_out.0", "attn_out.1", "mlp_out.1", "resid_out.1")
    dictionaries = {s: random_sae(32, s, seed=k, n_features=48) for k, s in enumerate(sites)}
    runs = CircuitRuns(tiny_models[arch], dictionaries, _ids(),
                       targets=LogitTarget(3, minus=4), settings=QUIET)
    downstream = [*_active(runs, level, 3), (level, ERROR, None), (level, 0, 2)]
    depth = runs.read_depth(level)
    upstream = {s: [*_active(runs, s, 5), (s, ERROR, None)] for s in sites
                if runs.depth(s) < depth}
    _assert_equal(*_both(runs, level, downstream, upstream, monkeypatch))


@pytest.mark.parametrize("kind", ["jumprelu", "topk", "transcoder"])
def test_pullback_reads_every_dictionary_kind(neox, kind, monkeypatch):
    runs, level, downstream, upstream = level_case(neox, kind)
    _assert_equal(*_both(runs, level, downstream, upstream, monkeypatch))


def test_unbatchable_backward_falls_back_to_copies(neox, monkeypatch):
    """A model whose backward ``vmap`` cannot batch gets the per-copy passes, same edges."""
    dictionaries = _dictionaries("relu")
    runs = CircuitRuns(neox, dictionaries, _ids(), targets=LogitTarget(3, minus=4),
                       settings=QUIET)
    level = "mlp_out.1"
    downstream = _active(runs, level, 3)
    upstream = {"resid_out.0": [*_active(runs, "resid_out.0", 5), ("resid_out.0", ERROR, None)]}
    common = {"ablation": "zero", "positional": False}
    expected = gradient_edges(runs, level, downstream, upstream, **common)

    def unbatchable(*args, **kwargs):
        raise RuntimeError("vmap: no batching rule for aten::made_up")

    monkeypatch.setattr(torch.autograd, "grad", _failing_batched(unbatchable))
    fallen_back = gradient_edges(runs, level, downstream, upstream, **common)
    assert fallen_back == pytest.approx(expected, abs=1e-6)


def _failing_batched(fail):
    """``torch.autograd.grad`` that fails only when asked to batch its cotangents."""
    original = torch.autograd.grad

    def grad(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            return fail(*args, **kwargs)
        return original(*args, **kwargs)

    return grad


@pytest.fixture(scope="module")
def neox(checkpoint_dirs):
    from featcircuits import load_model

    return load_model(checkpoint_dirs["gpt_neox"])
