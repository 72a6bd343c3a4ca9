"""Hostile inputs to the graph and prompt readers: FIFOs, devices, folders, huge files,
JSON bombs, malformed structure, conflicting versions, wrong-typed answers.

Every reader must refuse with a featcircuits error (``GraphError`` / ``NonFiniteError`` /
``PromptError``) naming the file — never hang on a FIFO, read ``/dev/zero`` forever,
allocate what a file only claims, or raise a foreign exception. Huge files are sparse (no
disk or memory used); the one render case runs in a subprocess under a 2 GiB address-space
limit, so a regression fails instead of exhausting the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featcircuits.errors import GraphError, NonFiniteError, PromptError
from featcircuits.files import MAX_JSON_DEPTH, parse_json, read_bytes_limited
from featcircuits.graph.io import (
    read_graph,
    read_graphml,
    read_json,
    read_tables,
    write_graphml,
    write_json,
    write_tables,
)
from featcircuits.graph.schema import MAX_POSITION
from featcircuits.render.examples import example_circuit
from featcircuits.tasks.prompts import read_prompts
from tests.support.deadline import deadline

ROW = {"clean": "When Mary and John went, John gave it to", "corrupt":
       "When Mary and John went, Mary gave it to", "answer": " Mary", "wrong_answer": " John"}




def _resealed(data: dict) -> dict:
    """``data`` with its SHA-256 recomputed, as a writer outside featcircuits would."""
    data = {k: v for k, v in data.items() if k != "sha256"}
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=True,
                      separators=(",", ":"))
    return {**data, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _graph_data(tmp_path: Path) -> dict:
    return json.loads(write_json(example_circuit(), tmp_path / "c.json").read_text())


def _write_edited(tmp_path: Path, data: dict, *, reseal: bool = True) -> Path:
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(_resealed(data) if reseal else data, allow_nan=True))
    return path


GRAPH_READERS = {
    "read_json": read_json,
    "read_graph": read_graph,
    "read_graphml": read_graphml,
}
PROMPT_SUFFIXES = [".jsonl", ".csv", ".json"]


# ------------------------------------------------------------ not a regular file
@pytest.mark.parametrize("reader", list(GRAPH_READERS))
def test_graph_reader_on_a_fifo(tmp_path, reader):
    """A circuit 'file' that is a FIFO with no writer (JSON, read_graph, GraphML) →
    GraphError 'is a FIFO' at once, never a blocked open."""
    fifo = tmp_path / ("c.graphml" if reader == "read_graphml" else "c.json")
    os.mkfifo(fifo)
    with deadline(), pytest.raises(GraphError, match="FIFO"):
        GRAPH_READERS[reader](fifo)


@pytest.mark.parametrize("suffix", PROMPT_SUFFIXES)
def test_prompt_reader_on_a_fifo(tmp_path, suffix):
    """A prompt file that is a FIFO with no writer (.jsonl, .csv, .json) → PromptError
    'is a FIFO' at once, never a blocked open."""
    fifo = tmp_path / f"prompts{suffix}"
    os.mkfifo(fifo)
    with deadline(), pytest.raises(PromptError, match="FIFO"):
        read_prompts(fifo)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_readers_on_dev_zero(tmp_path):
    """A graph or prompt file that is a link to /dev/zero (an endless character device) →
    GraphError / PromptError 'is a device' before a byte is read."""
    write_tables(example_circuit(), f"{tmp_path}/")
    (tmp_path / "nodes.csv").unlink()
    for name in ("c.json", "c.graphml", "nodes.csv", "prompts.jsonl", "prompts.csv"):
        (tmp_path / name).symlink_to("/dev/zero")
    with deadline():
        for name in ("c.json", "c.graphml", "nodes.csv"):
            with pytest.raises(GraphError, match="device"):
                read_graph(tmp_path / name)
        for name in ("prompts.jsonl", "prompts.csv"):
            with pytest.raises(PromptError, match="device"):
                read_prompts(tmp_path / name)


def test_readers_on_a_folder(tmp_path):
    """A folder named like a graph or prompt file (c.json, c.graphml, prompts.jsonl) →
    GraphError / PromptError 'is a folder', not IsADirectoryError."""
    for name in ("c.json", "c.graphml", "prompts.jsonl"):
        (tmp_path / name).mkdir()
    with pytest.raises(GraphError, match="folder"):
        read_json(tmp_path / "c.json")
    with pytest.raises(GraphError, match="folder"):
        read_graphml(tmp_path / "c.graphml")
    with pytest.raises(PromptError, match="folder"):
        read_prompts(tmp_path / "prompts.jsonl")


# ------------------------------------------------------------------- size limits
def test_huge_graph_files_are_refused_before_reading(tmp_path):
    """A 300 MiB sparse circuit JSON / GraphML / table (over the 256 MiB default) →
    GraphError naming the limit and the max_bytes keyword, refused by its size alone."""
    for name in ("c.json", "c.graphml"):
        with open(tmp_path / name, "wb") as handle:
            handle.truncate(300 * 2**20)
        with pytest.raises(GraphError, match="larger than the limit") as error:
            read_graph(tmp_path / name)
        assert "max_bytes=" in error.value.hint
    write_tables(example_circuit(), f"{tmp_path}/t/")
    with open(tmp_path / "t" / "nodes.csv", "r+b") as handle:
        handle.truncate(300 * 2**20)
    with pytest.raises(GraphError, match="larger than the limit"):
        read_tables(f"{tmp_path}/t/")


def test_graph_size_limit_is_a_keyword(tmp_path):
    """A genuine circuit JSON larger than max_bytes → GraphError; the same file with
    max_bytes raised (to its size) → the graph."""
    path = write_json(example_circuit(), tmp_path / "c.json")
    size = path.stat().st_size
    with pytest.raises(GraphError, match="larger than the limit"):
        read_json(path, max_bytes=size - 1)
    with pytest.raises(GraphError, match="larger than the limit"):
        read_graph(path, max_bytes=size - 1)
    assert read_json(path, max_bytes=size).number_of_nodes() == example_circuit(
    ).number_of_nodes()


def test_huge_prompt_file_is_refused_before_reading(tmp_path):
    """A 100 MiB sparse prompt file (.jsonl, .csv, .json; over the 64 MiB default) →
    PromptError naming max_bytes; a small file with max_bytes below its size → PromptError."""
    for suffix in PROMPT_SUFFIXES:
        with open(tmp_path / f"p{suffix}", "wb") as handle:
            handle.truncate(100 * 2**20)
        with pytest.raises(PromptError, match="larger than the limit") as error:
            read_prompts(tmp_path / f"p{suffix}")
        assert "max_bytes=" in error.value.hint
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(ROW) + "\n")
    with pytest.raises(PromptError, match="larger than the limit"):
        read_prompts(small, max_bytes=10)
    assert len(read_prompts(small)) == 1


def test_bounded_reader_reads_at_most_the_limit(tmp_path):
    """read_bytes_limited on a file of exactly the limit → its bytes; one byte over → the
    given error class; a negative or non-int limit → ParameterError."""
    from featcircuits.errors import ParameterError

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    assert read_bytes_limited(path, 100, error=GraphError) == b"x" * 100
    with pytest.raises(GraphError, match="larger than the limit of 99 bytes"):
        read_bytes_limited(path, 99, error=GraphError)
    for bad in (-1, 1.5, True):
        with pytest.raises(ParameterError):
            read_bytes_limited(path, bad)


# -------------------------------------------------------------------- JSON depth
def test_deeply_nested_prompt_json(tmp_path):
    """A prompt .json and a .jsonl line nested 100 000 deep (a JSON bomb) → PromptError
    'nested too deeply', not RecursionError."""
    bomb = "[" * 100_000 + "]" * 100_000
    (tmp_path / "p.json").write_text(bomb)
    (tmp_path / "p.jsonl").write_text(json.dumps(ROW) + "\n" + bomb + "\n")
    with pytest.raises(PromptError, match="nested too deeply"):
        read_prompts(tmp_path / "p.json")
    with pytest.raises(PromptError, match="line 2 is nested too deeply"):
        read_prompts(tmp_path / "p.jsonl")


def test_moderately_deep_json_is_refused(tmp_path):
    """A circuit JSON whose graph attribute nests 65 levels (parses, but deeper than the
    limit of 64), checksum recomputed, and a table manifest nested 100 000 deep →
    GraphError 'nested too deeply'; nesting at the limit parses."""
    nested: list = []
    for _ in range(MAX_JSON_DEPTH - 2):
        nested = [nested]
    data = _graph_data(tmp_path)
    data["graph"]["deep"] = nested  # top object → graph → MAX_JSON_DEPTH - 1 lists: too deep
    with pytest.raises(GraphError, match="nested too deeply"):
        read_json(_write_edited(tmp_path, data))
    assert parse_json(json.dumps(nested)) == nested  # at the limit itself
    write_tables(example_circuit(), f"{tmp_path}/t/")
    (tmp_path / "t" / "graph.json").write_text("{" + '"a":{' * 100_000 + "}" * 100_001)
    with pytest.raises(GraphError, match="nested too deeply"):
        read_tables(f"{tmp_path}/t/")


# ------------------------------------------------------------------ graph structure
@pytest.mark.parametrize("field, value", [("nodes", {"a": {"kind": "feature"}}),
                                          ("graph", [1, 2]), ("links", {"a": "b"})])
def test_graph_json_containers_of_the_wrong_kind(tmp_path, field, value):
    """Circuit JSON (checksum recomputed) with 'nodes' an object, 'graph' a list or 'links'
    an object → GraphError naming the field; the same in a table manifest's 'graph'."""
    data = _graph_data(tmp_path)
    data[field] = value
    with pytest.raises(GraphError, match=field):
        read_json(_write_edited(tmp_path, data))
    if field == "graph":
        write_tables(example_circuit(), f"{tmp_path}/t/")
        manifest = json.loads((tmp_path / "t" / "graph.json").read_text())
        manifest["graph"] = value
        (tmp_path / "t" / "graph.json").write_text(json.dumps(_resealed(manifest)))
        with pytest.raises(GraphError, match="'graph' is a list"):
            read_graph(tmp_path / "t")


def _edit(data: dict, case: str) -> None:
    node, link = data["nodes"][1], data["links"][0]
    if case == "self_loop":
        link["target"] = link["source"]
    elif case == "nan_effect":
        node["effect"] = float("nan")
    elif case == "inf_weight":
        link["weight"] = float("inf")
    elif case == "inf_activation":
        node["activation"] = float("-inf")
    elif case == "no_layer":
        del node["layer"]
    elif case == "huge_position":
        node["position"] = 10**9
    elif case == "negative_position":
        node["position"] = -1


STRUCTURE_CASES = {
    "self_loop": (GraphError, "self-loop"),
    "nan_effect": (NonFiniteError, "effect"),
    "inf_weight": (NonFiniteError, "weight"),
    "inf_activation": (NonFiniteError, "activation"),
    "no_layer": (GraphError, "layer"),
    "huge_position": (GraphError, "beyond the limit"),
    "negative_position": (GraphError, "position"),
}


@pytest.mark.parametrize("case", list(STRUCTURE_CASES))
@pytest.mark.parametrize("sealed", [True, False])
def test_graph_json_structure_is_validated(tmp_path, case, sealed):
    """Circuit JSON (checksum recomputed, or absent as in hand-written files) with a
    self-loop, a NaN effect, an inf weight or activation, a node without layer, or a node
    at position 10**9 or -1 → GraphError / NonFiniteError naming the value."""
    data = _graph_data(tmp_path)
    _edit(data, case)
    if not sealed:
        del data["sha256"]
    path = _write_edited(tmp_path, data, reseal=sealed)
    error, pattern = STRUCTURE_CASES[case]
    with pytest.raises(error, match=pattern):
        (read_json if sealed else read_graph)(path)


def test_graph_writers_refuse_what_readers_refuse(tmp_path):
    """A graph without 'layer' on a node, or at position MAX_POSITION → every writer (JSON,
    GraphML, tables) refuses, so nothing is written that cannot be read back."""
    for edit in ({"layer": None}, {"position": MAX_POSITION}):
        graph = example_circuit()
        node = next(iter(graph.nodes))
        graph.nodes[node].update(edit)
        for write, name in ((write_json, "c.json"), (write_graphml, "c.graphml"),
                            (write_tables, "t_")):
            with pytest.raises(GraphError):
                write(graph, tmp_path / name)
    assert not any(tmp_path.iterdir())


def test_tables_with_a_huge_position(tmp_path):
    """Circuit tables whose nodes.csv puts a node at position 10**9 (manifest checksums
    recomputed) → GraphError 'beyond the limit'."""
    write_tables(example_circuit(), f"{tmp_path}/")
    nodes = (tmp_path / "nodes.csv").read_text().splitlines()
    header = nodes[0].split(",")
    row = nodes[1].split(",")
    row[header.index("position")] = str(10**9)
    nodes[1] = ",".join(row)
    (tmp_path / "nodes.csv").write_text("\n".join(nodes) + "\n")
    manifest = json.loads((tmp_path / "graph.json").read_text())
    manifest["nodes_sha256"] = hashlib.sha256((tmp_path / "nodes.csv").read_bytes()).hexdigest()
    (tmp_path / "graph.json").write_text(json.dumps(_resealed(manifest)))
    with pytest.raises(GraphError, match="beyond the limit"):
        read_tables(f"{tmp_path}/")


def test_render_of_a_huge_position_allocates_nothing(tmp_path):
    """An in-memory circuit with a node at position 10**9 rendered to HTML, DOT and a
    diagram (in a subprocess limited to 2 GiB of address space) → GraphError before the
    layout allocates a band per position (it was killed at 8.3 GB)."""
    script = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
        from featcircuits.errors import GraphError
        from featcircuits.render import render_circuit, to_dot, to_html
        from featcircuits.render.examples import example_circuit
        graph = example_circuit()
        graph.nodes["input@1"]["position"] = 10**9
        for render in (to_html, to_dot, render_circuit):
            try:
                render(graph)
            except GraphError as error:
                assert "beyond the limit" in str(error), error
            else:
                raise SystemExit(f"{render.__name__} drew the graph")
        print("refused")
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], check=False,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and "refused" in done.stdout, done.stderr[-2000:]


# ---------------------------------------------------------------- format_version
@pytest.mark.parametrize("top, inner, sealed", [
    (2, None, True), ("1", None, True), (None, 2, False), (1, 2, True), (1, 2, False),
    (2, 1, False), (1, 1.0, False),
])
def test_format_version_top_level_and_graph(tmp_path, top, inner, sealed):
    """Circuit JSON whose format_version is another version or a string at the top level
    (where write_json writes it), another version in 'graph' only (hand-written
    node-link), or two different values in both places → GraphError naming the version;
    never read as version 1."""
    data = _graph_data(tmp_path)
    data.pop("format_version")
    if top is not None:
        data["format_version"] = top
    if inner is not None:
        data["graph"]["format_version"] = inner
    if not sealed:
        del data["sha256"]
    path = _write_edited(tmp_path, data, reseal=sealed)
    with pytest.raises(GraphError, match="format.version"):
        read_graph(path)


def test_format_version_agreeing_in_both_places_reads(tmp_path):
    """Hand-written node-link JSON with format_version 1 at the top level and in 'graph',
    or in 'graph' only, or nowhere → the graph (version 1)."""
    for top, inner in ((1, 1), (None, 1), (None, None)):
        data = _graph_data(tmp_path)
        del data["sha256"]
        data.pop("format_version")
        if top is not None:
            data["format_version"] = top
        if inner is not None:
            data["graph"]["format_version"] = inner
        graph = read_graph(_write_edited(tmp_path, data, reseal=False))
        assert graph.graph["format_version"] == 1


# -------------------------------------------------------------------------- prompts
def test_jsonl_mixing_objects_and_arrays(tmp_path):
    """A prompt JSONL whose line 2 is an array (line 1 an object), or a number → PromptError
    naming the line and what it is."""
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(list(ROW.values())) + "\n")
    with pytest.raises(PromptError, match="line 2 is a JSON array, not an object"):
        read_prompts(path)
    path.write_text(json.dumps(ROW) + "\n\n7\n")
    with pytest.raises(PromptError, match="line 3 is a JSON number"):
        read_prompts(path)


@pytest.mark.parametrize("answers", ["Kevin", {"a": "Kevin"}, 3, [], None, True])
def test_auto_circuit_answers_of_the_wrong_type(tmp_path, answers):
    """An auto-circuit prompt file whose 'answers' is the string "Kevin" (read as "K"
    before), an object, a number, an empty list, null or a boolean → PromptError naming
    the prompt and asking for a list of strings."""
    item = {"clean": ROW["clean"], "corrupt": ROW["corrupt"], "answers": answers,
            "wrong_answers": [" John"]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompts": [item]}))
    with pytest.raises(PromptError, match="prompt 0 has answers=.*list of strings"):
        read_prompts(path)
    path.write_text(json.dumps({"prompts": [{**item, "answers": [" Mary"],
                                             "wrong_answers": answers}]}))
    with pytest.raises(PromptError, match="wrong_answers"):
        read_prompts(path)


def test_auto_circuit_answers_list_reads(tmp_path):
    """An auto-circuit prompt file with answers [" Mary"] and a list-of-rows .json whose
    second row is an array → the first reads (answer " Mary"), the second is PromptError."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompts": [{"clean": ROW["clean"], "corrupt": ROW["corrupt"],
                                             "answers": [" Mary"],
                                             "wrong_answers": [" John"]}]}))
    assert read_prompts(path)["answer"].tolist() == [" Mary"]
    path.write_text(json.dumps([ROW, list(ROW.values())]))
    with pytest.raises(PromptError, match="row 1 is a JSON array"):
        read_prompts(path)


def test_graphml_entity_expansion_bomb(tmp_path):
    """A GraphML 'billion laughs' file (nine levels of XML entities, each ten of the one
    below: 10**10 bytes when expanded) → GraphError from the parser's amplification limit,
    in well under a second, without expanding it."""
    entities = '<!ENTITY a0 "xxxxxxxxxx">' + "".join(
        f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10))
    (tmp_path / "bomb.graphml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE graphml [{entities}]>'
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">'
        '<key id="d0" for="graph" attr.name="x" attr.type="string"/>'
        '<graph edgedefault="directed"><data key="d0">&a9;</data></graph></graphml>')
    with deadline(), pytest.raises(GraphError, match="cannot read GraphML"):
        read_graph(tmp_path / "bomb.graphml")
