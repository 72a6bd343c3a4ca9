"""Node attributions are computed once per site and setting on a ``CircuitRuns``: a second
circuit on the same runs reuses them (no pass runs), another setting recomputes."""

from __future__ import annotations

import pytest
import torch

from featcircuits.circuits import attribution_circuit
from featcircuits.circuits.attribution import node_attributions
from featcircuits.circuits.targets import LogitTarget
from featcircuits.engine.runs import CircuitRuns
from tests.support.factories import QUIET, random_saes


def test_node_attributions_are_reused_per_setting(tiny_models):
    ids = torch.randint(0, 60, (3, 6), generator=torch.Generator().manual_seed(4))
    runs = CircuitRuns(tiny_models["gpt_neox"], random_saes(), ids,
                       targets=LogitTarget(3, minus=4), settings=QUIET)
    ig = node_attributions(runs, method="ig", steps=3)
    after_ig = runs.rows_run
    assert after_ig > 0   # integrated gradients ran passes
    assert node_attributions(runs, method="ig", steps=3) == ig
    assert runs.rows_run == after_ig   # reused: no pass
    plain = node_attributions(runs)
    assert plain.keys() == ig.keys() and plain != ig   # another setting: recomputed
    five = node_attributions(runs, method="ig", steps=5)
    assert runs.rows_run > after_ig and five != ig
    # a subset of candidates is computed (and not stored in place of every candidate)
    site = next(iter(runs.sites))
    first = sorted(f for s, f, _ in plain if s == site and f >= 0)[:2]
    subset = node_attributions(runs, candidates={site: first})
    assert {f for s, f, _ in subset if s == site and f >= 0} == set(first)
    assert node_attributions(runs) == plain
    # a circuit on the same runs uses the stored values: same graph both times
    one = attribution_circuit(runs, tau=1e-3, max_nodes=5)
    rows = runs.rows_run
    two = attribution_circuit(runs, tau=1e-3, max_nodes=5)
    assert sorted(one.edges) == sorted(two.edges) and one.number_of_edges() > 0
    assert runs.rows_run - rows > 0   # the edges still run their passes


def test_node_scales_of_a_few_nodes_equal_the_whole_table(tiny_models):
    """``prepare_node_scales`` encodes only the requested features; the values equal those
    of the whole-site table ``node_scale`` computes, positional and not."""
    ids = torch.randint(0, 60, (3, 6), generator=torch.Generator().manual_seed(4))

    def runs():
        return CircuitRuns(tiny_models["gpt_neox"], random_saes(), ids,
                           targets=LogitTarget(3, minus=4), settings=QUIET)

    few, whole = runs(), runs()
    site = "mlp_out.1"
    nodes = [(site, 3, None), (site, 5, None), (site, 5, 2), (site, 7, 4)]
    few.prepare_node_scales(nodes)
    assert all(node in few._scales for node in nodes)
    assert not few._feature_scales   # no whole-site table was built
    got = [few.node_scale(node) for node in nodes]
    expected = [whole.node_scale(node) for node in nodes]
    assert len(whole._feature_scales) == 2   # the reference built both tables
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert sum(v > 0 for v in got) >= 3   # distinct features, most of them active
