"""Discovery warns when a threshold empties the circuit or cuts a target off, naming the
threshold and a value that keeps the target's strongest measured edge."""

import re
import warnings

import pytest
import torch

from featcircuits.circuits import acdc_circuit, attribution_circuit, hybrid_circuit
from featcircuits.circuits.targets import LogitTarget
from featcircuits.engine.runs import CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import CircuitWarning
from tests.support.factories import random_saes

QUIET = RunSettings(progress=False)


@pytest.fixture(scope="module")
def runs(tiny_models):
    ids = torch.randint(0, 60, (3, 5), generator=torch.Generator().manual_seed(3))
    return CircuitRuns(tiny_models["gpt_neox"], random_saes(), ids,
                       targets=[LogitTarget(9, positions="all")], settings=QUIET)


@pytest.mark.parametrize("discover", [acdc_circuit, attribution_circuit, hybrid_circuit])
def test_empty_circuit_warns_with_a_threshold_that_works(runs, discover):
    extra = {"node_effects": False} if discover is acdc_circuit else {"node_tau": 0.0}
    with pytest.warns(CircuitWarning, match=r"tau=1e\+06 removed every edge") as record:
        graph = discover(runs, tau=1e6, **extra)
    assert graph.number_of_edges() == 0
    suggested = float(re.search(r"tau <= ([0-9.e+-]+) keeps", str(record[0].message)).group(1))
    if discover is hybrid_circuit:  # suggested from attribution's estimate, not verified
        assert 0 < suggested < 1e6
        return
    # the suggested value keeps an edge into the target, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", CircuitWarning)
        kept = discover(runs, tau=suggested * 0.999, **extra)
    target = runs.targets[0].node_id
    assert kept.in_degree(target) > 0


def test_node_threshold_that_removes_every_node_is_named(runs):
    with pytest.warns(CircuitWarning, match=r"node_tau=1e\+06 removed every node"):
        attribution_circuit(runs, tau=0.0, node_tau=1e6)
