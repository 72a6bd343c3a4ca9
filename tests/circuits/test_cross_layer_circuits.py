"""Circuits refuse cross-layer transcoders (not integrated yet) with an error naming what is
missing, before any run: a one-site node would be a silently wrong answer."""

from __future__ import annotations

import pytest

from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit
from featcircuits.circuits.targets import LogitTarget
from featcircuits.engine.runs import CircuitRuns
from featcircuits.errors import DictionaryError
from tests.support.factories import QUIET, random_cross_layer_transcoder, random_sae


@pytest.mark.parametrize("entry", ["runs", "acdc", "attribution"])
def test_circuits_refuse_a_cross_layer_transcoder(tiny_models, entry):
    model = tiny_models["gpt2"]
    dictionaries = {"resid_out.0": random_sae(32, "resid_out.0"),
                    **random_cross_layer_transcoder().dictionaries()}
    ids = [[1, 2, 3, 4]]
    with pytest.raises(DictionaryError, match="(?s)circuit discovery.*mlp_out.0.*also writes "
                       r"\['mlp_out.1'\].*error node per output site"):
        if entry == "runs":
            CircuitRuns(model, dictionaries, ids, targets=[LogitTarget(5)], settings=QUIET)
        elif entry == "acdc":
            acdc_circuit(model, dictionaries, ids, targets=[LogitTarget(5)], tau=0.1,
                         settings=QUIET)
        else:
            attribution_circuit(model, dictionaries, ids, targets=[LogitTarget(5)], tau=0.1,
                                settings=QUIET)
