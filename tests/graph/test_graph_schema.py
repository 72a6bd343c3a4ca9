"""The one circuit-graph schema (featcircuits.graph.schema) and the one graph reader
(featcircuits.graph.io.read_graph), including the files the `circuit` command writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from featcircuits.errors import GraphError
from featcircuits.graph import schema
from featcircuits.graph.io import (
    read_graph,
    read_json,
    write_graphml,
    write_json,
    write_tables,
)
from featcircuits.model.sites import Site
from featcircuits.render.examples import example_circuit
from featcircuits.render.labels import row_key

ROOT = Path(__file__).resolve().parents[2]
SITES = ["resid_out.2", "mlp_in.2", "resid_in.2", "mlp_out.2", "attn_out.2", "resid_mid.2"]


def _same_graph(a: nx.DiGraph, b: nx.DiGraph) -> None:
    assert set(a.nodes) == set(b.nodes)
    assert {(u, v): w for u, v, w in a.edges(data="weight")} == pytest.approx(
        {(u, v): w for u, v, w in b.edges(data="weight")})
    for node, attrs in a.nodes(data=True):
        for key in schema.NODE_ATTRIBUTES:
            ours, theirs = attrs.get(key), b.nodes[node].get(key)
            if key == "label":  # tables store "" and None alike (an empty cell)
                ours, theirs = ours or "", theirs or ""
            assert theirs == ours, (node, key)


# ---------------------------------------------------------------------------- site order
def test_site_order_is_site_depth_order():
    by_depth = sorted(SITES, key=lambda s: Site.parse(s).depth)
    assert by_depth[:3] == ["resid_in.2", "attn_out.2", "resid_mid.2"]  # independent check
    assert sorted(SITES, key=schema.site_depth) == by_depth
    rows = {site: row_key({"kind": "feature", "site": site, "layer": 2}) for site in SITES}
    assert sorted(SITES, key=rows.__getitem__) == by_depth
    # embed before layer 0, a later layer after every site of layer 2, unknown sites last
    assert schema.site_depth("embed") < schema.site_depth("resid_in.0")
    assert schema.site_depth("resid_in.3") > max(map(schema.site_depth, SITES))
    assert schema.site_depth("not a site") == float("inf") == schema.site_depth(None)


def test_diagram_rows_follow_site_depth():
    graph = nx.DiGraph(format_version=1)
    for index, site in enumerate(SITES):
        graph.add_node(f"{site}/{index}", kind="feature", site=site, layer=2, feature=index)
    graph.add_node("output/m", kind="output", site=None, layer=3)
    for node in list(graph.nodes)[:-1]:
        graph.add_edge(node, "output/m", weight=1.0)
    from featcircuits.render.layout import LayoutSpec, layered_layout

    sizes = {node: (1.0, 1.0) for node in graph}
    layout = layered_layout(graph, sizes, [], LayoutSpec(0.1, 1.0, 0.1, 0.1, 0.5, 0.1, 0.1))
    names = [row.name for row in layout.rows if row.name in SITES]
    assert names == sorted(SITES, key=lambda s: Site.parse(s).depth)


def test_node_ids_round_trip_and_one_definition():
    for ident in ("resid_out.3/117", "resid_out.3/117@5", "mlp_in.2/error@0", "input@4",
                  "embed/42", "output/logit_diff"):
        assert schema.parse_node_id(ident).id == ident
    with pytest.raises(GraphError, match="cannot parse"):
        schema.parse_node_id("resid_out.3/x")
    from featcircuits import graph

    # the package exports the schema's functions; nothing defines its own
    assert graph.make_node_id is schema.make_node_id
    assert graph.parse_node_id is schema.parse_node_id
    assert graph.check_graph is schema.check_graph
    sources = "\n".join(p.read_text() for p in (ROOT / "featcircuits").rglob("*.py")
                        if p.name != "schema.py")
    for definition in ("def make_node_id", "def parse_node_id", "_SITE_ORDER", "_ID_RE"):
        assert definition not in sources


# -------------------------------------------------------------------------- read_graph
def test_read_graph_reads_every_file_the_toolkit_writes(tmp_path):
    graph = example_circuit()
    _same_graph(graph, read_graph(write_json(graph, tmp_path / "c.json")))
    _same_graph(graph, read_graph(write_graphml(graph, tmp_path / "c.graphml")))
    nodes, edges = write_tables(graph, tmp_path / "c_")
    for path in (nodes, edges, tmp_path / "c_graph.json"):
        _same_graph(graph, read_graph(path))
    write_tables(graph, f"{tmp_path}/folder/")
    _same_graph(graph, read_graph(tmp_path / "folder"))
    # a hand-written networkx node-link file (no checksum, "edges" key, no version)
    data = nx.node_link_data(graph, edges="edges")
    data["graph"].pop("format_version", None)
    (tmp_path / "plain.json").write_text(json.dumps(data))
    _same_graph(graph, read_graph(tmp_path / "plain.json"))


def test_read_graph_verifies_checksums(tmp_path):
    graph = example_circuit()
    path = write_json(graph, tmp_path / "c.json")
    data = json.loads(path.read_text())
    data["links"][0]["weight"] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(GraphError, match="checksum"):
        read_graph(path)
    write_tables(graph, tmp_path / "t_")
    table = tmp_path / "t_edges.csv"
    table.write_text(table.read_text().replace("0.", "1.", 1))
    with pytest.raises(GraphError, match="checksum"):
        read_graph(tmp_path / "t_graph.json")
    graphml = write_graphml(graph, tmp_path / "c.graphml")
    graphml.write_text(graphml.read_text().replace("attribution", "acdc", 1))
    with pytest.raises(GraphError, match="checksum"):
        read_graph(graphml)
    with pytest.raises(GraphError, match="does not exist"):
        read_graph(tmp_path / "missing.json")


@pytest.mark.slow
def test_cli_render_reads_what_the_circuit_command_writes(tmp_path):
    """`featcircuits circuit` writes <name>.json, <name>_nodes/_edges.csv and the table
    manifest <name>_graph.json (save_circuit); `featcircuits render` reads each of them."""
    from featcircuits.cli.main import main
    from featcircuits.experiments.circuits import save_circuit

    graph = example_circuit()
    paths = save_circuit(graph, tmp_path, "parens")
    manifest = tmp_path / "parens_graph.json"
    assert manifest.is_file() and read_json(paths["json"]).number_of_nodes() == len(graph)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "featcircuits", "render", str(manifest),
                             "-o", str(tmp_path / "from_manifest.html")], cwd=tmp_path, env=env, check=False,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "<svg" in (tmp_path / "from_manifest.html").read_text()
    for source in (paths["json"], paths["nodes"]):
        out = tmp_path / f"{Path(source).stem}.dot"
        assert main(["render", str(source), "-o", str(out)]) == 0
        assert all(f'"{node}"' in out.read_text() for node in graph.nodes)
    data = json.loads(paths["json"].read_text())
    data["nodes"][0]["effect"] = 123.0
    paths["json"].write_text(json.dumps(data))
    assert main(["render", str(paths["json"]), "-o", str(tmp_path / "x.dot")]) == 1
    assert not (tmp_path / "x.dot").exists()
