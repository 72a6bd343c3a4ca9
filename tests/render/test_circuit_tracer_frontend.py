"""featcircuits' Neuronpedia / circuit-tracer JSON goes through circuit-tracer's own frontend
data code (``formatData`` of its ``util-cg.js``, vendored in tests/fixtures/circuit_tracer)
under node, for a positional, a position-free and a measured (IOI) circuit.

Skipped, saying why, where node or the npm packages d3 / d3-jetpack are missing
(``npm install --prefix ~/.cache/featcircuits-node d3@7 d3-jetpack@2``; ``.ci/run`` does it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from featcircuits.graph import read_json
from featcircuits.render import example_circuit, random_layered_circuit, to_neuronpedia_json
from featcircuits.render.neuronpedia import POSITION_FREE_TOKENS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HARNESS = FIXTURES / "circuit_tracer" / "format_data.mjs"
MODULES = Path(
    os.environ.get("FEATCIRCUITS_NODE_MODULES")
    or Path.home() / ".cache" / "featcircuits-node" / "node_modules"
)
NODE = shutil.which("node")


def _skip_reason() -> str | None:
    if NODE is None:
        return "node is not installed (apt-get install nodejs)"
    for package in ("d3/dist/d3.js", "d3-jetpack/src/nestBy.js", "d3-collection"):
        if not (MODULES / package).exists():
            return (f"{MODULES / package} is missing: npm install --prefix "
                    f"{MODULES.parent} d3@7 d3-jetpack@2 (or set FEATCIRCUITS_NODE_MODULES)")
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _format_data(data: dict, tmp_path: Path) -> dict:
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = subprocess.run([NODE, str(HARNESS), str(MODULES), str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _position_free():
    graph = example_circuit()
    graph.remove_node("resid_out.0/117@3")  # 117 also sits at position 9: one id without positions
    graph.graph["prompt_tokens"] = []
    for index, node in enumerate(sorted(n for n in graph if graph.nodes[n]["kind"] == "input")):
        graph.nodes[node]["feature"] = 100 + index  # token ids tell the inputs apart
    for node in graph:
        graph.nodes[node]["position"] = None
    return graph


def _check_everything_kept(data: dict, shown: dict) -> None:
    assert sorted(shown["nodes"]) == sorted(n["node_id"] for n in data["nodes"])
    assert shown["links"] == len(data["links"])


def test_positional_circuit_passes_format_data(tmp_path):
    graph = example_circuit()
    graph.nodes["output/logit_diff"]["probability"] = 0.625
    data = to_neuronpedia_json(graph, slug="ioi-demo")
    shown = _format_data(data, tmp_path)
    _check_everything_kept(data, shown)
    assert shown["logitPct"] == {"5_0_13": 0.625}  # parsed from clerp's '(p=...)'
    assert shown["logitToken"] == {"5_0_13": "logit diff"}
    assert shown["promptTokens"] == graph.graph["prompt_tokens"]
    assert shown["ctx"]["3_5_13"] == 13 and shown["ctx"]["E_1_1"] == 1


def test_position_free_circuit_passes_format_data(tmp_path):
    graph = _position_free()
    data = to_neuronpedia_json(graph, slug="no-positions")
    assert data["metadata"]["prompt_tokens"] == list(POSITION_FREE_TOKENS)
    shown = _format_data(data, tmp_path)
    _check_everything_kept(data, shown)  # a one-token prompt would have lost every node
    assert shown["nodes"] and shown["logitPct"] == {"5_0_1": 0.0}
    outputs = {n["node_id"] for n in data["nodes"] if n["feature_type"] == "logit"}
    assert {node: ctx for node, ctx in shown["ctx"].items() if ctx == 1} == dict.fromkeys(outputs, 1)
    inputs = [n["feature"] for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert sorted(inputs) == [100, 101, 102]


def test_measured_and_row_numbered_circuits_pass_format_data(tmp_path):
    for graph, slug in ((read_json(FIXTURES / "ioi_circuit_pruned.json"), "ioi"),
                        (random_layered_circuit(60, 180, seed=4), "rows")):
        data = to_neuronpedia_json(graph, slug=slug, scan="synthetic")
        shown = _format_data(data, tmp_path)
        _check_everything_kept(data, shown)
        assert shown["streams"] >= 3
