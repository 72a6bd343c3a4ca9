"""Node attributions are computed once per site and setting on a ``CircuitRuns``: a second
circuit on the same runs reuses them (no pass runs), another setting recomputes."""

from __future__ import annotations

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
