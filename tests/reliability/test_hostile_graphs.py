"""Hostile graph files: truncated, bit-flipped, garbage and wrong-typed circuit files.

Every reader in ``featcircuits.graph.io`` (JSON node-link, GraphML, CSV tables) must either
load exactly the graph that was written or raise a featcircuits error — never another
exception, a hang, or a different graph. Hypothesis drives one set of damages; a seeded
loop walks truncation points and bit flips deterministically.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featcircuits import FeatCircuitsError
from featcircuits.graph.io import (
    from_json_data,
    read_graphml,
    read_json,
    read_tables,
    write_graphml,
    write_json,
    write_tables,
)
from featcircuits.render.examples import example_circuit
from tests.support.deadline import deadline

FORMATS = {
    "json": (lambda g, folder: write_json(g, folder / "c.json"),
             lambda folder: read_json(folder / "c.json"), ["c.json"]),
    "graphml": (lambda g, folder: write_graphml(g, folder / "c.graphml"),
                lambda folder: read_graphml(folder / "c.graphml"), ["c.graphml"]),
    "tables": (lambda g, folder: write_tables(g, f"{folder}/"),
               lambda folder: read_tables(f"{folder}/"),
               ["nodes.csv", "edges.csv", "graph.json"]),
}


def _canonical(graph) -> tuple:
    return (sorted(graph.graph.items(), key=str), sorted(graph.nodes(data=True), key=str),
            sorted(graph.edges(data=True), key=str))




def _load_or_project_error(read, folder: Path, reference) -> str:
    try:
        with deadline():
            loaded = read(folder)
    except FeatCircuitsError:
        return "error"
    assert _canonical(loaded) == reference, "a damaged file loaded as a different graph"
    return "loaded"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """``{format: (folder, reference)}`` — each format written once, its clean load."""
    out = {}
    for name, (write, read, _files) in FORMATS.items():
        folder = tmp_path_factory.mktemp(f"graph_{name}")
        write(example_circuit(), folder)
        out[name] = (folder, _canonical(read(folder)))
    return out


def _copy(folder: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        (target / file.name).write_bytes(file.read_bytes())


def _damage(content: bytes, kind: str, rng: random.Random) -> bytes:
    data = bytearray(content)
    if kind == "truncate":
        return bytes(data[: rng.randrange(len(data))])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    return b""


@pytest.mark.parametrize("fmt", list(FORMATS))
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_graph_files(tmp_path_factory, written, fmt, data):
    """Hypothesis: truncated, bit-flipped, garbage or empty JSON / GraphML / CSV-table files
    → a featcircuits error or the identical graph, never another exception or a hang."""
    source, reference = written[fmt]
    folder = tmp_path_factory.mktemp("damaged")
    _copy(source, folder)
    target = folder / data.draw(st.sampled_from(FORMATS[fmt][2]))
    kind = data.draw(st.sampled_from(["truncate", "flip", "garbage", "empty"]))
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    target.write_bytes(_damage(target.read_bytes(), kind, rng))
    _load_or_project_error(FORMATS[fmt][1], folder, reference)


def test_deterministic_fuzz_loop(tmp_path, written):
    """Seeded loop, 3 formats × every file: 40 truncation points, 60 single/multi bit flips
    → every outcome a featcircuits error or the identical graph; undamaged files load."""
    rng = random.Random(20261126)
    outcomes = {"error": 0, "loaded": 0}
    for fmt, (_write, read, files) in FORMATS.items():
        source, reference = written[fmt]
        for file in files:
            clean = (source / file).read_bytes()
            damaged = [clean[:cut] for cut in sorted(rng.sample(range(len(clean)), 40))]
            damaged += [_damage(clean, "flip", rng) for _ in range(60)]
            for content in damaged:
                folder = tmp_path / "work"
                _copy(source, folder)
                (folder / file).write_bytes(content)
                outcomes[_load_or_project_error(read, folder, reference)] += 1
        assert _load_or_project_error(read, source, reference) == "loaded"
    # a damaged file is (almost) never the same graph: the checksums catch the changes
    assert outcomes["error"] >= 0.95 * sum(outcomes.values()), outcomes


def _resealed(data: dict) -> dict:
    """A hostile but self-consistent file: the checksum recomputed after the edit, as a
    writer outside featcircuits would (SHA-256 of the rest's canonical JSON: sorted keys,
    no whitespace; docs/graph-format.md)."""
    data = {k: v for k, v in data.items() if k != "sha256"}
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=True,
                      separators=(",", ":"))
    return {**data, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


WRONG_TYPES = [None, "x", 3.5, -4, True, [], {}, [1, 2], {"a": 1}, 10**30]


@pytest.mark.parametrize("path", [
    ("format_version",), ("directed",), ("graph",), ("nodes",), ("links",),
    ("nodes", 0), ("nodes", 0, "id"), ("nodes", 0, "kind"), ("nodes", 0, "layer"),
    ("links", 0), ("links", 0, "source"), ("links", 0, "target"), ("links", 0, "weight"),
    ("graph", "target_nodes"),
])
def test_wrong_typed_json_fields(tmp_path, path):
    """Circuit JSON with a field replaced by a wrong-typed value (checksum recomputed, so
    the schema checks themselves are exercised) → a featcircuits error or a valid graph."""
    data = json.loads(write_json(example_circuit(), tmp_path / "c.json").read_text())
    assert _resealed(data) == data  # the resealing is the writer's: edits reach the schema
    for value in WRONG_TYPES:
        edited = json.loads(json.dumps(data))
        holder = edited
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = value
        (tmp_path / "e.json").write_text(json.dumps(_resealed(edited)))
        try:
            with deadline():
                graph = read_json(tmp_path / "e.json")
        except FeatCircuitsError:
            continue
        from featcircuits.graph import check_graph

        check_graph(graph)  # whatever loads satisfies the schema


def test_deeply_nested_json_is_a_graph_error(tmp_path):
    """A JSON bomb (100 000 nested lists) → GraphError, not RecursionError."""
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FeatCircuitsError):
        read_json(tmp_path / "deep.json")


def test_unchecked_graphml_damage_never_crashes(tmp_path):
    """GraphML read with verify=False (hand-edited files): 150 seeded bit flips → a
    featcircuits error or a schema-valid graph, never a foreign exception."""
    path = write_graphml(example_circuit(), tmp_path / "c.graphml")
    clean = path.read_bytes()
    rng = random.Random(7)
    for _ in range(150):
        (tmp_path / "d.graphml").write_bytes(_damage(clean, "flip", rng))
        try:
            with deadline():
                read_graphml(tmp_path / "d.graphml", verify=False)
        except FeatCircuitsError:
            pass


def test_checksum_can_be_skipped_for_hand_edited_json(tmp_path):
    """A hand-edited JSON (weight changed, checksum stale) → read_json refuses with a hint;
    from_json_data without the sha256 key loads the edit."""
    path = write_json(example_circuit(), tmp_path / "c.json")
    data = json.loads(path.read_text())
    data["links"][0]["weight"] = 0.125
    path.write_text(json.dumps(data))
    with pytest.raises(FeatCircuitsError, match="does not match its checksum") as error:
        read_json(path)
    assert "from_json_data" in error.value.hint
    del data["sha256"]
    graph = from_json_data(data)
    first = data["links"][0]
    assert graph.edges[first["source"], first["target"]]["weight"] == 0.125
