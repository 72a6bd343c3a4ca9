"""Tests of featcircuits.render: diagram, DOT, HTML and Neuronpedia export (fast, no model)."""

from __future__ import annotations

import io
import itertools
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.colors as mcolors
import networkx as nx
import pytest
from matplotlib.figure import Figure

from featcircuits.errors import GraphError, NonFiniteError, OutputError, ParameterError
from featcircuits.render import (
    example_circuit,
    random_layered_circuit,
    render_circuit,
    to_dot,
    to_html,
    to_neuronpedia_json,
    validate_circuit_graph,
    write_dot,
    write_neuronpedia_json,
)
from featcircuits.render.layout import LayoutSpec, layered_layout
from featcircuits.render.style import MISSING_FILL, NEGATIVE_COLOR, POSITIVE_COLOR, effect_cmap

NASTY_ID = "resid_out.1/7@2 <b>&\"q'\\"
NASTY_LABEL = '<script>alert("x")</script> & more'


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small() -> nx.DiGraph:
    return example_circuit()


@pytest.fixture(scope="module")
def big() -> nx.DiGraph:
    graph = random_layered_circuit(50, 150, seed=0)
    assert (graph.number_of_nodes(), graph.number_of_edges()) == (50, 150)
    return graph


@pytest.fixture(scope="module")
def big_figure(big) -> Figure:
    return render_circuit(big)


@pytest.fixture
def nasty() -> nx.DiGraph:
    """A tiny graph whose ids and labels contain HTML/DOT metacharacters."""
    graph = nx.DiGraph(
        format_version=1,
        target='t<&>"',
        metric="m&m",
        tau=None,
        model="x",
        prompt_tokens=["<a>", " &b"],
        method="acdc",
    )
    graph.add_node(
        "input@0",
        kind="input",
        site="embed",
        layer=-1,
        feature=None,
        position=0,
        activation=None,
        effect=0.5,
        label="",
    )
    graph.add_node(
        NASTY_ID,
        kind="feature",
        site="resid_out.1",
        layer=1,
        feature=7,
        position=1,
        activation=1.0,
        effect=-0.5,
        label=NASTY_LABEL,
    )
    graph.add_node(
        "output/logit_diff",
        kind="output",
        site=None,
        layer=2,
        feature=None,
        position=None,
        activation=None,
        effect=1.0,
        label="",
    )
    graph.add_edge("input@0", NASTY_ID, weight=-0.25, method="acdc")
    graph.add_edge(NASTY_ID, "output/logit_diff", weight=0.75, method="acdc")
    return graph


def _artists(fig: Figure, prefix: str) -> dict[str, object]:
    ax = fig.axes[0]
    found = {}
    for artist in [*ax.patches, *ax.texts]:
        gid = artist.get_gid() or ""
        if gid.startswith(prefix):
            found[gid[len(prefix) :]] = artist
    return found


# --------------------------------------------------------------------------- schema
def test_validation_names_the_bad_node_or_edge(small):
    assert validate_circuit_graph(small) is small
    with pytest.raises(GraphError, match="DiGraph"):
        validate_circuit_graph(nx.Graph())
    bad = small.copy()
    bad.graph["format_version"] = 2
    with pytest.raises(GraphError, match="format_version 2"):
        validate_circuit_graph(bad)
    bad = small.copy()
    bad.nodes["resid_out.1/88@9"]["kind"] = "neuron"
    with pytest.raises(GraphError, match="resid_out.1/88@9"):
        validate_circuit_graph(bad)
    bad = small.copy()
    del bad.nodes["input@1"]["layer"]
    with pytest.raises(GraphError, match="input@1.*layer"):
        validate_circuit_graph(bad)
    bad = small.copy()
    bad.edges["input@1", "resid_out.0/301@1"]["weight"] = float("nan")
    with pytest.raises(NonFiniteError, match="input@1"):
        validate_circuit_graph(bad)
    bad = small.copy()
    bad.add_edge("input@1", "input@1", weight=1.0)
    with pytest.raises(GraphError, match="self-loop"):
        validate_circuit_graph(bad)
    bad = small.copy()
    del bad.edges["input@1", "resid_out.0/301@1"]["weight"]
    with pytest.raises(GraphError, match="no 'weight'"):
        render_circuit(bad)


# --------------------------------------------------------------------------- layout
def test_layout_rows_and_token_columns(big):
    sizes = {node: (0.5, 0.2) for node in big}
    layout = layered_layout(
        big, sizes, [(0.3, 0.2)] * 8, LayoutSpec(0.1, 0.4, 0.05, 0.08, 0.3, 0.1, 0.1)
    )
    names = [row.name for row in layout.rows]
    assert names[0] == "embed" and names[-1] == "output"
    assert names[1:-1] == [
        f"{site}.{layer}" for layer in range(4) for site in ("mlp_out", "resid_out")
    ]
    assert [row.y for row in layout.rows] == sorted(row.y for row in layout.rows)
    bands = {band.position: band for band in layout.bands}
    assert sorted(b for b in bands if b is not None) == list(range(8))
    for node, place in layout.nodes.items():
        attrs = big.nodes[node]
        assert layout.rows[place.row].name == {"input": "embed", "output": "output"}.get(
            attrs["kind"], attrs["site"]
        )
        position = (
            attrs["position"] if attrs["position"] is not None else 7
        )  # outputs sit at the last token
        assert bands[position].left <= place.x <= bands[position].right
    # nodes of one row never share a slot
    for row in range(len(layout.rows)):
        xs = sorted(p.x for p in layout.nodes.values() if p.row == row)
        assert all(b - a >= 0.4 - 1e-9 for a, b in itertools.pairwise(xs))


# --------------------------------------------------------------------------- diagram
@pytest.mark.parametrize("which", ["small", "big"])
def test_one_artist_per_node_and_edge(which, small, big, big_figure):
    graph = small if which == "small" else big
    fig = render_circuit(small) if which == "small" else big_figure
    assert set(_artists(fig, "node:")) == set(graph.nodes)
    assert (
        len([p for p in fig.axes[0].patches if (p.get_gid() or "").startswith("node:")])
        == graph.number_of_nodes()
    )
    edge_gids = {f"{u}->{v}" for u, v in graph.edges}
    assert set(_artists(fig, "edge:")) == edge_gids
    assert (
        len([p for p in fig.axes[0].patches if (p.get_gid() or "").startswith("edge:")])
        == graph.number_of_edges()
    )
    assert set(_artists(fig, "label:")) == set(graph.nodes)


def test_edge_colour_follows_sign_and_width_follows_influence(big, big_figure):
    from featcircuits.graph import influence

    edges = _artists(big_figure, "edge:")
    strength = influence(big).edges
    widths = []
    for (source, target), weight in nx.get_edge_attributes(big, "weight").items():
        artist = edges[f"{source}->{target}"]
        expected = POSITIVE_COLOR if weight > 0 else NEGATIVE_COLOR
        assert mcolors.to_hex(artist.get_edgecolor(), keep_alpha=False) == expected
        widths.append((strength[(source, target)], artist.get_linewidth(), artist.get_alpha()))
    widths.sort()
    assert all(a[1] <= b[1] and a[2] <= b[2] for a, b in itertools.pairwise(widths))
    assert widths[-1][1] > 3 * widths[0][1]


def test_node_fill_follows_effect_sign(big, big_figure):
    nodes = _artists(big_figure, "node:")
    peak = max(abs(a["effect"]) for _, a in big.nodes(data=True))
    for node, attrs in big.nodes(data=True):
        red, _, blue, _ = nodes[node].get_facecolor()
        if attrs["effect"] > 0.05:
            assert blue > red + 0.02, node
        elif attrs["effect"] < -0.05:
            assert red > blue + 0.02, node
        if abs(attrs["effect"]) == peak:  # the strongest node takes the end of the scale
            end = effect_cmap()(1.0 if attrs["effect"] > 0 else 0.0)
            assert nodes[node].get_facecolor() == pytest.approx(end)
    graph = example_circuit()
    graph.nodes["resid_out.1/88@9"]["effect"] = None
    fig = render_circuit(graph)
    face = _artists(fig, "node:")["resid_out.1/88@9"].get_facecolor()
    assert mcolors.to_hex(face) == MISSING_FILL


def test_error_nodes_are_hatched_squares(small):
    fig = render_circuit(small)
    for node, artist in _artists(fig, "node:").items():
        is_error = small.nodes[node]["kind"] == "error"
        assert bool(artist.get_hatch()) == is_error
        assert (type(artist).__name__ == "Rectangle") == is_error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_never_overlap_at_50_nodes_150_edges(seed, big_figure):
    fig = big_figure if seed == 0 else render_circuit(random_layered_circuit(50, 150, seed=seed))
    renderer = fig.canvas.get_renderer()
    labels = _artists(fig, "label:")
    boxes = {node: text.get_window_extent(renderer) for node, text in labels.items()}
    assert len(boxes) == 50
    overlapping = [
        (a, b)
        for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2)
        if box_a.overlaps(box_b)
    ]
    assert overlapping == []
    shapes = {
        node: patch.get_window_extent(renderer) for node, patch in _artists(fig, "node:").items()
    }
    covering = [
        (n, m)
        for n, box in boxes.items()
        for m, shape in shapes.items()
        if m != n and box.overlaps(shape)
    ]
    assert covering == []
    # everything stays inside the figure
    width, height = fig.canvas.get_width_height()
    assert all(0 <= b.x0 and b.x1 <= width and 0 <= b.y0 and b.y1 <= height for b in boxes.values())


def test_text_annotations_title_and_tokens(small):
    labels = {"resid_out.3/5@13": "custom label"}
    top_tokens = {
        "resid_out.3/5@13": [" nope"],
        "resid_out.2/17@13": [" John", " Mary", " he", " she"],
    }
    fig = render_circuit(small, labels=labels, top_tokens=top_tokens)
    texts = {node: t.get_text() for node, t in _artists(fig, "label:").items()}
    assert texts["resid_out.3/5@13"] == "#5\ncustom label"  # labels win over top_tokens
    assert texts["resid_out.2/17@13"] == "#17\n␣John ␣Mary ␣he"  # first three top tokens
    assert texts["resid_out.1/88@9"] == "#88\nduplicate token"  # else the label attribute
    assert texts["resid_out.1/error@9"] == "error"
    full = render_circuit(small, id_style="full")
    assert _artists(full, "label:")["resid_out.1/88@9"].get_text().startswith("resid_out.1/88@9\n")
    heading = {t.get_gid(): t.get_text() for t in fig.axes[0].texts}
    assert heading["title"] == "Circuit for IOI: ' Mary' vs ' John'"
    assert "τ = 0.05" in heading["subtitle"] and "13 nodes, 15 edges" in heading["subtitle"]
    assert heading["token:9"] == "␣John\n9"
    assert render_circuit(small, title="My circuit").axes[0].texts  # custom title accepted
    assert {t.get_text() for t in render_circuit(small, title="My circuit").axes[0].texts} >= {
        "My circuit"
    }


def test_same_graph_gives_identical_bytes(small, tmp_path):
    def svg_text(graph) -> str:
        render_circuit(graph, path=tmp_path / "a.svg")
        return (tmp_path / "a.svg").read_text()

    first, second = svg_text(small), svg_text(example_circuit())
    assert first == second
    assert "<svg" in first
    shuffled = nx.DiGraph()
    shuffled.graph.update(small.graph)
    shuffled.add_nodes_from(reversed(list(small.nodes(data=True))))
    shuffled.add_edges_from(reversed(list(small.edges(data=True))))
    assert svg_text(shuffled) == first  # insertion order does not matter
    changed = example_circuit()
    changed.edges["input@1", "resid_out.0/301@1"]["weight"] = -0.9
    assert svg_text(changed) != first
    png = [io.BytesIO(), io.BytesIO()]
    for buffer in png:
        render_circuit(small).savefig(buffer, format="png")
    assert png[0].getvalue() == png[1].getvalue()


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")]
)
def test_save_by_extension(small, tmp_path, suffix, magic):
    path = tmp_path / "sub" / f"circuit{suffix}"
    render_circuit(small, path=path)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_bad_arguments(small, tmp_path):
    with pytest.raises(OutputError, match=r"\.jpeg"):
        render_circuit(small, path=tmp_path / "x.jpeg")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ParameterError, match="id_style"):
        render_circuit(small, id_style="long")
    with pytest.raises(ParameterError, match="no nodes"):
        render_circuit(nx.DiGraph())


def test_draws_into_a_given_axes(small):
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot(1, 1, 1)
    out = render_circuit(small, ax=ax)
    assert out is fig
    assert (
        len([p for p in ax.patches if (p.get_gid() or "").startswith("node:")])
        == small.number_of_nodes()
    )
    assert (
        len([p for p in ax.patches if (p.get_gid() or "").startswith("edge:")])
        == small.number_of_edges()
    )


# --------------------------------------------------------------------------- DOT
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ATTRS = rf"\[(?:[A-Za-z_]+={_QUOTED}(?:, )?)*\]"
_DOT_LINE = re.compile(
    "|".join(
        [
            r"// .*",
            r"digraph circuit \{",
            rf"  (?:graph|node|edge) {_ATTRS};",
            rf"  \{{ rank=(?:same|min|max);(?: {_QUOTED};)+ \}}",
            rf"  {_QUOTED} {_ATTRS};",
            rf"  {_QUOTED} -> {_QUOTED} {_ATTRS};",
            r"\}",
        ]
    )
)


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text[1:-1])


def _parse_dot(text: str):
    nodes, edges, ranks = {}, {}, []
    for line in text.splitlines():
        assert _DOT_LINE.fullmatch(line), line
        attrs = (
            {
                key: _unquote(value)
                for key, value in re.findall(rf"([A-Za-z_]+)=({_QUOTED})", line.split(" [", 1)[-1])
            }
            if line.endswith("];")
            else {}
        )
        if match := re.fullmatch(rf"  ({_QUOTED}) -> ({_QUOTED}) .*", line):
            edges[(_unquote(match.group(1)), _unquote(match.group(2)))] = attrs
        elif match := re.fullmatch(rf"  ({_QUOTED}) \[.*", line):
            nodes[_unquote(match.group(1))] = attrs
        elif line.startswith("  { rank="):
            ranks.append([_unquote(q) for q in re.findall(_QUOTED, line)])
    return nodes, edges, ranks


@pytest.mark.parametrize("which", ["small", "big", "nasty"])
def test_dot_round_trips_nodes_edges_and_weights(which, small, big, nasty):
    graph = {"small": small, "big": big, "nasty": nasty}[which]
    text = to_dot(graph)
    nodes, edges, ranks = _parse_dot(text)
    assert set(nodes) == set(graph.nodes)
    assert set(edges) == set(graph.edges)
    for (source, target), attrs in edges.items():
        weight = graph.edges[source, target]["weight"]
        assert float(attrs["circuit_weight"]) == weight
        assert attrs["color"][:7] == (POSITIVE_COLOR if weight > 0 else NEGATIVE_COLOR)
    widths = sorted((abs(float(a["circuit_weight"])), float(a["penwidth"])) for a in edges.values())
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(widths))
    for node, attrs in nodes.items():
        assert attrs["circuit_kind"] == graph.nodes[node]["kind"]
    # one rank group per row, holding exactly the nodes of that site
    assert sorted(n for group in ranks for n in group) == sorted(graph.nodes)
    for group in ranks:
        assert (
            len(
                {
                    graph.nodes[n]["site"] if graph.nodes[n]["kind"] != "output" else "out"
                    for n in group
                }
            )
            == 1
        )


def test_dot_escaping(nasty, tmp_path):
    text = to_dot(nasty)
    assert '"resid_out.1/7@2 <b>&\\"q\'\\\\"' in text
    path = write_dot(nasty, tmp_path / "c.dot")
    assert path.read_text(encoding="utf-8") == text


def test_dot_is_read_by_pydot_and_graphviz_when_installed(big, tmp_path):
    text = to_dot(big)
    checked = False
    try:
        import pydot  # noqa: F401
    except ImportError:
        pass
    else:
        (tmp_path / "c.dot").write_text(text)
        read = nx.nx_pydot.read_dot(tmp_path / "c.dot")
        assert read.number_of_nodes() == big.number_of_nodes()
        assert read.number_of_edges() == big.number_of_edges()
        checked = True
    if shutil.which("dot"):
        result = subprocess.run(
            ["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count('class="node"') == big.number_of_nodes()
        assert result.stdout.count('class="edge"') == big.number_of_edges()
        checked = True
    if not checked:
        pytest.skip(
            "neither pydot nor Graphviz is installed; the regular-grammar check above covers DOT"
        )


# --------------------------------------------------------------------------- HTML
class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[dict] = []
        self.edges: list[dict] = []
        self.sections: list[dict] = []
        self.svgs = 0
        self.scripts = 0
        self.csp = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "g" and "node" in classes:
            self.nodes.append(attrs)
        if tag == "path" and "edge" in classes:
            self.edges.append(attrs)
        if tag == "section" and "dashboard" in classes:
            self.sections.append(attrs)
        if tag == "svg" and "legend-shape" not in classes:
            self.svgs += 1
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.csp = attrs["content"]
        if tag == "script":
            self.scripts += 1
            assert "src" not in attrs

    handle_startendtag = handle_starttag


@pytest.mark.parametrize("which", ["small", "big", "nasty"])
def test_html_structure(which, small, big, nasty):
    graph = {"small": small, "big": big, "nasty": nasty}[which]
    page = to_html(graph)
    parsed = _Collector()
    parsed.feed(page)
    assert parsed.svgs == 1 and parsed.scripts == 1
    assert sorted(n["data-id"] for n in parsed.nodes) == sorted(graph.nodes)  # escaping round-trips
    assert len(parsed.edges) == graph.number_of_edges()
    for edge in parsed.edges:
        weight = graph.edges[edge["data-source"], edge["data-target"]]["weight"]
        assert float(edge["data-weight"]) == weight
        assert edge["stroke"] == (POSITIVE_COLOR if weight > 0 else NEGATIVE_COLOR)
    assert len(parsed.sections) == graph.number_of_nodes()
    urls = re.findall(r"https?://[^\s\"'<>)]*", page)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}
    assert parsed.csp.startswith("default-src 'none';")  # the browser may load nothing from outside


def test_html_escapes_text(nasty):
    page = to_html(nasty, title="<i>title</i>")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<i>title</i>" not in page and "&lt;i&gt;title&lt;/i&gt;" in page
    assert "<b>&" not in page


def test_html_dashboards_and_file(small, tmp_path):
    fragment = '<div class="hist"><b>activations of 5</b></div>'
    path = tmp_path / "c.html"
    page = to_html(
        small, path, dashboards={"resid_out.3/5@13": fragment, "not-a-node": "<p>ignored</p>"}
    )
    assert path.read_text(encoding="utf-8") == page
    assert page.count(fragment) == 1 and "ignored" not in page
    sections = re.findall(
        r'<section class="dashboard" id="dash-(\d+)" data-for="([^"]*)" hidden>(.*?)</section>',
        page,
        flags=re.DOTALL,
    )
    by_node = {node: body for _, node, body in sections}
    assert by_node["resid_out.3/5@13"] == fragment
    table = by_node["resid_out.1/88@9"]  # no dashboard: attribute table with its strongest edges
    assert "<th>feature</th><td>88</td>" in table and "<th>effect</th><td>-0.8</td>" in table
    assert "strongest inputs" in table and "resid_out.0/117@9" in table
    with pytest.raises(ParameterError, match="dashboards"):
        to_html(small, dashboards={"resid_out.3/5@13": 3})


# --------------------------------------------------------------------------- Neuronpedia
def test_neuronpedia_structure(small):
    data = to_neuronpedia_json(small, slug="ioi-demo")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    assert meta["slug"] == "ioi-demo" and meta["scan"] == "synthetic-4-layer"
    assert meta["prompt_tokens"] == small.graph["prompt_tokens"]
    assert meta["prompt"] == "When Mary and John went to the store, John gave a drink to"
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    nodes = {n["node_id"]: n for n in data["nodes"]}
    assert len(nodes) == small.number_of_nodes()
    required = {
        "node_id",
        "feature",
        "layer",
        "ctx_idx",
        "feature_type",
        "jsNodeId",
        "clerp",
        "influence",
        "activation",
        "is_target_logit",
        "token_prob",
        "run_idx",
        "reverse_ctx_idx",
    }
    assert all(required <= set(n) for n in nodes.values())
    assert nodes["3_5_13"]["feature_type"] == "cross layer transcoder"
    assert nodes["3_5_13"]["layer"] == "3" and nodes["3_5_13"]["ctx_idx"] == 13
    assert nodes["3_5_13"]["clerp"] == "Mary (IO mover) [resid_out.3/5@13]"
    assert nodes["1_-1_9"]["feature_type"] == "mlp reconstruction error"
    assert nodes["E_1_1"]["feature_type"] == "embedding" and nodes["E_1_1"]["layer"] == "E"
    logits = [n for n in nodes.values() if n["feature_type"] == "logit"]
    assert len(logits) == 1 and logits[0]["is_target_logit"] and logits[0]["layer"] == "5"
    assert logits[0]["ctx_idx"] == 13  # the position-free output sits at the last token
    # influence: cumulative share, smallest for the largest |effect|
    assert min(nodes.values(), key=lambda n: n["influence"])["node_id"] == logits[0]["node_id"]
    assert max(n["influence"] for n in nodes.values()) == pytest.approx(1.0)
    links = {(link["source"], link["target"]): link["weight"] for link in data["links"]}
    assert len(links) == small.number_of_edges()
    assert links[("2_17_13", "3_5_13")] == -0.55
    mapping = meta["featcircuits"]["node_ids"]
    for (source, target), weight in links.items():
        assert small.edges[mapping[source], mapping[target]]["weight"] == weight
    json.dumps(data, allow_nan=False)


def test_neuronpedia_numbers_rows_when_layers_hold_several_sites(big):
    data = to_neuronpedia_json(big, slug="big")
    meta = data["metadata"]["featcircuits"]
    assert meta["layers_are_model_layers"] is False
    assert meta["layers"] == {
        str(i): f"{s}.{l}"
        for i, (l, s) in enumerate((l, s) for l in range(4) for s in ("mlp_out", "resid_out"))
    }
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids) == 50
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    for node in data["nodes"]:
        original = big.nodes[meta["node_ids"][node["node_id"]]]
        if original["kind"] in ("feature", "error"):
            assert meta["layers"][node["layer"]] == original["site"]


def test_neuronpedia_writer_and_index(small, tmp_path):
    first = write_neuronpedia_json(small, tmp_path / "a.json", slug="a")
    write_neuronpedia_json(small, tmp_path / "b.json", slug="b", prompt="custom prompt")
    write_neuronpedia_json(small, tmp_path / "a.json", slug="a")
    assert json.loads(first.read_text())["metadata"]["slug"] == "a"
    assert json.loads((tmp_path / "b.json").read_text())["metadata"]["prompt"] == "custom prompt"
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["b", "a"]
    with pytest.raises(ParameterError, match="slug"):
        to_neuronpedia_json(small, slug="Bad Slug!")
    clash = small.copy()
    clash.nodes["input@3"]["position"] = 1
    clash.nodes["input@3"]["feature"] = 1
    clash.nodes["input@1"]["feature"] = 1
    with pytest.raises(GraphError, match="both map"):
        to_neuronpedia_json(clash, slug="x")


# ------------------------------------------------------------- the IOI circuit, readable
IOI_PRUNED = Path(__file__).resolve().parents[1] / "fixtures" / "ioi_circuit_pruned.json"


@pytest.mark.slow  # about 2-5 s: measures 68 labels
def test_pruned_ioi_circuit_figure_is_at_most_2_to_1_with_legible_labels():
    """``featcircuits circuit ioi``'s circuit (260 nodes) after ``prune(graph)`` with the
    default shares, as the command draws it (written by ``write_json`` from that run; 68
    nodes): the default figure is at most 2:1 and no text is smaller than 8 pt."""
    from matplotlib.text import Text

    from featcircuits.graph import read_json

    graph = read_json(IOI_PRUNED)
    assert graph.graph["pruned"]["nodes_before"] == 260
    fig = render_circuit(graph)
    width, height = fig.get_size_inches()
    assert width / height <= 2.0
    assert height <= 12  # fits a screen at 100 % after scaling the ratio
    texts = [t for t in fig.findobj(Text) if t.get_text().strip()]
    labels = [t for t in texts if (t.get_gid() or "").startswith("label:")]
    assert len(labels) == graph.number_of_nodes()
    assert min(t.get_fontsize() for t in texts) >= 8.0
    subtitle = next(t for t in texts if t.get_gid() == "subtitle").get_text()
    assert "kept 68 of 260 nodes" in subtitle


def test_neuronpedia_index_is_written_with_the_graph_and_read_bounded(tmp_path):
    """write_neuronpedia_json writes the graph JSON and graph-metadata.json as one set (no
    staging folder left behind; a second slug is appended to the index, the same slug is
    replaced); an index that is a FIFO is refused with OutputError instead of hanging, and
    a broken index leaves the old graph file untouched."""
    import json
    import os

    from featcircuits.errors import OutputError
    from featcircuits.render.examples import example_circuit
    from featcircuits.render.neuronpedia import INDEX_FILENAME, write_neuronpedia_json

    graph = example_circuit()
    write_neuronpedia_json(graph, tmp_path / "a.json", slug="a")
    write_neuronpedia_json(graph, tmp_path / "b.json", slug="b")
    write_neuronpedia_json(graph, tmp_path / "a.json", slug="a")
    index = json.loads((tmp_path / INDEX_FILENAME).read_text())
    assert [g["slug"] for g in index["graphs"]] == ["b", "a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", INDEX_FILENAME]

    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / INDEX_FILENAME)
    with pytest.raises(OutputError, match="not a regular file|FIFO"):
        write_neuronpedia_json(graph, fifo_dir / "c.json", slug="c")
    assert not (fifo_dir / "c.json").exists()
