"""The HTML viewer in a real headless chromium, on three graphs: the 13-node example, the IOI
circuit (``featcircuits circuit ioi`` after ``prune``, 68 nodes) and a 2,000-node random
layered graph.

For each: the target is inside the window on open; no label overlaps another label or
another node (bounding boxes from the DOM); zoom (buttons, wheel about the pointer), pan
and fit move the drawing as they should; search finds nodes by feature id and by label and
centres the match; the sliders show exactly the nodes and edges whose precomputed keys pass
and every shown node keeps a shown path to the target. Slider steps are timed (printed; no
assertion). Skipped where no chromium or websocket-client is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest

from featcircuits.graph import read_json
from featcircuits.render import example_circuit, random_layered_circuit, to_html
from featcircuits.render.shares import slider_keys

pytest.importorskip(
    "websocket", reason="websocket-client is not installed (pip install websocket-client)"
)
from tests.support.cdp import Browser, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary found (apt-get install chromium)"
)
IOI = Path(__file__).resolve().parents[1] / "fixtures" / "ioi_circuit_pruned.json"
WIDTH, HEIGHT = 1400, 900


def _small():
    graph = example_circuit()
    node = graph.nodes["resid_out.3/5@13"]  # what dashboards.label_features stores
    node["top_contexts"] = ["When Mary and John went to the store, John gave a drink to⟦ Mary⟧"]
    node["logit_up"] = [" Mary", " her", " Anna"]
    node["logit_down"] = [" John", " him", " the"]
    return graph


def _graph(which: str) -> nx.DiGraph:
    if which == "small":
        return _small()
    if which == "ioi":
        return read_json(IOI)
    return random_layered_circuit(2000, 5000, n_positions=10, seed=1)


# slow (make test-slow, CI): opening a case takes 2-5 s (the 2,000-node one 15-30 s);
# tests/render/test_render_browser.py covers the page in the default suite
CASES = [
    pytest.param("small", id="small", marks=pytest.mark.slow),
    pytest.param("ioi", id="ioi", marks=pytest.mark.slow),
    pytest.param("random2000", id="random2000", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=CASES)
def opened(request, tmp_path_factory):
    graph = _graph(request.param)
    path = tmp_path_factory.mktemp("viewer") / f"{request.param}.html"
    to_html(graph, path)
    with Browser(CHROMIUM, width=WIDTH, height=HEIGHT, timeout=60) as browser:
        browser.navigate(path.as_uri())
        yield request.param, graph, browser


def _transform(browser) -> tuple[float, float, float]:
    return tuple(browser.evaluate(
        "(() => { const m = document.getElementById('viewport').transform.baseVal.consolidate().matrix;"
        " return [m.a, m.e, m.f]; })()"))


def _centre(browser, node: str) -> tuple[float, float]:
    return tuple(browser.evaluate(
        f"(() => {{ const r = document.querySelector('.node[data-id={json.dumps(node)}] .shape')"
        ".getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"))


def _diagram_rect(browser) -> tuple[float, float, float, float]:
    return tuple(browser.evaluate(
        "(() => { const r = document.getElementById('diagram').getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom]; })()"))


def _set(browser, slider: str, value: float) -> None:
    browser.evaluate(f"(() => {{ const s = document.getElementById('{slider}'); s.value = '{value}';"
                     " s.dispatchEvent(new Event('input')); })()")


def test_target_is_inside_the_window_on_open(opened):
    which, graph, browser = opened
    left, top, right, bottom = _diagram_rect(browser)
    assert right - left > 0.9 * WIDTH and bottom - top > 0.6 * HEIGHT  # the drawing fills the page
    for target in [n for n, kind in graph.nodes(data="kind") if kind == "output"]:
        x, y = _centre(browser, target)
        assert left <= x <= right and top <= y <= bottom, (target, x, y)
    scale = _transform(browser)[0]
    print(f"{which}: opened at scale {scale:.3f}")
    if which == "small":
        assert scale >= 1.0  # a small drawing is not shrunk


# every shown label's box against every other label and every other node's shape, in the
# drawing's own coordinates (getBBox: not affected by zoom); sweep over x
_OVERLAPS = """(() => {
  const boxes = [];
  for (const n of document.querySelectorAll('svg .node')) {
    if (getComputedStyle(n).visibility !== 'visible') continue;
    const l = n.querySelector('.label').getBBox(), s = n.querySelector('.shape').getBBox();
    boxes.push([l.x, l.y, l.x + l.width, l.y + l.height, n.dataset.id, 'label']);
    boxes.push([s.x, s.y, s.x + s.width, s.y + s.height, n.dataset.id, 'shape']);
  }
  boxes.sort((a, b) => a[0] - b[0]);
  const hits = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length && boxes[j][0] < boxes[i][2] - 0.5; j++) {
      const a = boxes[i], b = boxes[j];
      if (a[4] === b[4] || (a[5] === 'shape' && b[5] === 'shape')) continue;
      if (Math.min(a[3], b[3]) - Math.max(a[1], b[1]) > 0.5) hits.push([a[4], a[5], b[4], b[5]]);
    }
  }
  return [boxes.length / 2, hits.slice(0, 5), hits.length];
})()"""


def test_labels_do_not_overlap(opened):
    _, graph, browser = opened
    _set(browser, "node-share", 1)
    _set(browser, "edge-share", 1)
    shown, examples, count = browser.evaluate(_OVERLAPS)
    assert shown == graph.number_of_nodes()
    assert count == 0, examples
    widths = browser.evaluate("Array.from(document.querySelectorAll('svg .node .label'))"
                              ".map(l => l.getBBox().width)")
    assert min(widths) > 10  # the labels were drawn


def test_zoom_pan_and_fit(opened):
    _, graph, browser = opened
    browser.evaluate("document.getElementById('fit').click()")
    k0, x0, y0 = _transform(browser)
    target = next(n for n, kind in graph.nodes(data="kind") if kind == "output")
    left, top, right, bottom = _diagram_rect(browser)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    tx, ty = _centre(browser, target)
    browser.evaluate("document.getElementById('zoom-in').click()")
    k1, _, _ = _transform(browser)
    assert k1 == pytest.approx(1.25 * k0, rel=1e-3)
    zx, zy = _centre(browser, target)  # about the window's centre: distances grow 1.25x
    assert zx - cx == pytest.approx(1.25 * (tx - cx), abs=1.0)
    assert zy - cy == pytest.approx(1.25 * (ty - cy), abs=1.0)
    # the wheel zooms about the pointer: the drawing's point under it stays put
    k1, x1, y1 = _transform(browser)
    wx, wy = cx + 40, cy - 30
    dleft, dtop = left, top
    under = ((wx - dleft - x1) / k1, (wy - dtop - y1) / k1)
    browser.mouse("mouseMoved", wx, wy)
    browser.send("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": wx, "y": wy,
                                              "deltaX": 0, "deltaY": -400}, session=True)
    browser.evaluate("new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")
    k2, x2, y2 = _transform(browser)
    assert k2 > 1.5 * k1
    assert dleft + x2 + under[0] * k2 == pytest.approx(wx, abs=1.0)  # screen pixels
    assert dtop + y2 + under[1] * k2 == pytest.approx(wy, abs=1.0)
    wx, wy = _centre(browser, target)
    # drag on the background pans by the pointer's movement
    px, py = left + 5, top + 5
    browser.mouse("mouseMoved", px, py)
    browser.mouse("mousePressed", px, py, button="left", clicks=1)
    for step in range(1, 6):
        browser.mouse("mouseMoved", px + 12 * step, py + 7 * step, button="left")
    browser.mouse("mouseReleased", px + 60, py + 35, button="left", clicks=1)
    dx, dy = _centre(browser, target)
    assert dx - wx == pytest.approx(60, abs=1.0) and dy - wy == pytest.approx(35, abs=1.0)
    assert browser.evaluate("document.getElementById('panel').hidden") is True  # no click
    browser.evaluate("document.getElementById('fit').click()")
    k3, x3, y3 = _transform(browser)  # fit again: the opening view (translation to 0.1 px:
    assert k3 == pytest.approx(k0, rel=1e-3)  # the page rounds the transform it writes)
    assert (x3, y3) == pytest.approx((x0, y0), abs=0.1)


def test_search_by_feature_id_and_label(opened):
    _, graph, browser = opened
    _set(browser, "node-share", 1)
    features = sorted((a["feature"], n) for n, a in graph.nodes(data=True)
                      if a["kind"] == "feature" and a.get("feature") is not None)
    feature, _ = features[len(features) // 2]
    expected = {n for n, a in graph.nodes(data=True) if a.get("feature") == feature}
    label = next(a["label"] for _, a in sorted(graph.nodes(data=True)) if (a.get("label") or "").strip())
    query = label[:5].lower()
    by_label = {n for n, a in graph.nodes(data=True)
                if query in n.lower() or query in (a.get("label") or "").lower()}
    left, top, right, bottom = _diagram_rect(browser)
    for text, wanted in ((f"#{feature}", expected), (label[:5], by_label)):
        browser.evaluate("(() => { const s = document.getElementById('search');"
                         f" s.value = {json.dumps(text)}; s.dispatchEvent(new Event('input')); }})()")
        found = set(browser.evaluate(
            "Array.from(document.querySelectorAll('svg .node.match')).map(n => n.dataset.id)"))
        assert found == wanted, text
        shown = browser.evaluate("document.getElementById('search-count').textContent")
        assert shown.startswith(f"{len(wanted)} match")
        current = browser.evaluate("document.querySelector('svg .node.current').dataset.id")
        x, y = _centre(browser, current)  # the first match is on screen, readable
        assert left < x < right and top < y < bottom
        assert _transform(browser)[0] >= 0.6
        if len(wanted) > 1:  # Enter centres the next match
            browser.evaluate("document.getElementById('search').focus()")
            browser.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", "key": "Enter",
                         "code": "Enter", "windowsVirtualKeyCode": 13}, session=True)
            second = browser.evaluate("document.querySelector('svg .node.current').dataset.id")
            assert second != current and second in wanted
            x, y = _centre(browser, second)
            assert abs(x - (left + right) / 2) < 2 and abs(y - (top + bottom) / 2) < 2
            assert _transform(browser)[0] >= 1.0
    browser.evaluate("(() => { const s = document.getElementById('search'); s.value = '';"
                     " s.dispatchEvent(new Event('input')); })()")
    assert browser.evaluate("document.querySelectorAll('svg .node.match').length") == 0


_SHOWN = """(() => {
  const nodes = Array.from(document.querySelectorAll('svg .node'))
    .filter(n => getComputedStyle(n).visibility === 'visible').map(n => n.dataset.id);
  const edges = Array.from(document.querySelectorAll('svg .edge'))
    .filter(e => getComputedStyle(e).visibility === 'visible').map(e => [e.dataset.source, e.dataset.target]);
  return [nodes, edges];
})()"""

_STEP = """(async () => {
  const s = document.getElementById('node-share');
  const t0 = performance.now();
  s.value = '%s'; s.dispatchEvent(new Event('input'));
  document.body.getBoundingClientRect();  // style and layout flushed
  const t1 = performance.now();
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));  // and a frame painted
  return [t1 - t0, performance.now() - t0];
})()"""


def test_sliders_prune_by_influence_and_keep_the_target_connected(opened):
    which, graph, browser = opened
    keys = slider_keys(graph)
    targets = [n for n, kind in graph.nodes(data="kind") if kind == "output"]
    _set(browser, "edge-share", 0.98)
    timings = []
    for share in (1.0, 0.95, 0.8, 0.5, 0.2, 0.05, 0.5, 0.9, 1.0):
        handler_ms, frame_ms = browser.evaluate(_STEP % share)
        timings.append((share, handler_ms, frame_ms))
        nodes, edges = browser.evaluate(_SHOWN)
        limit = float("inf") if share >= 1 else share
        want_nodes = {n for n, k in keys.nodes.items() if k < limit}
        want_edges = {e for e, (k, ek) in keys.edges.items() if k < limit and ek < 0.98}
        assert set(nodes) == want_nodes, share
        assert {tuple(e) for e in edges} == want_edges, share
        if share < 1:
            shown = nx.DiGraph(list(map(tuple, edges)))
            shown.add_nodes_from(nodes)
            reach = set(targets)
            for target in targets:
                reach |= nx.ancestors(shown, target)
            assert reach == set(nodes), share  # every shown node has a shown path to a target
            assert any(shown.in_degree(t) for t in targets if graph.in_degree(t))
    count = browser.evaluate("document.getElementById('shown-count').textContent")
    assert count.startswith(f"{graph.number_of_nodes()} / {graph.number_of_nodes()} nodes")
    steps = ", ".join(f"{s}: {h:.1f}/{f:.1f}" for s, h, f in timings)
    print(f"{which} ({graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges) slider step "
          f"ms (handler+style / +frame): {steps}; worst {max(f for _, _, f in timings):.1f} ms")


def test_hover_card_shows_label_contexts_and_effect(opened):
    which, graph, browser = opened
    node = "resid_out.3/5@13" if which == "small" else max(
        (n for n, a in graph.nodes(data=True) if a["kind"] == "feature"),
        key=lambda n: (abs(graph.nodes[n].get("effect") or 0), n))
    _set(browser, "node-share", 1)
    for text in (node, ""):  # searching the id centres the node; clearing keeps the view
        browser.evaluate("(() => { const s = document.getElementById('search');"
                         f" s.value = {json.dumps(text)}; s.dispatchEvent(new Event('input')); }})()")
    x, y = _centre(browser, node)
    browser.mouse("mouseMoved", x, y)
    hidden, text = browser.evaluate("[document.getElementById('tooltip').hidden,"
                                    " document.getElementById('tooltip').textContent]")
    assert hidden is False and node in text
    attrs = graph.nodes[node]
    if attrs.get("label"):
        assert attrs["label"] in text
    assert "effect " in text
    if which == "small":
        assert "top contexts" in text and "⟦ Mary⟧" in text
        assert "promotes ↑ ␣Mary  ␣her  ␣Anna" in text
        assert "suppresses ↓ ␣John  ␣him  ␣the" in text
    browser.mouse("mouseMoved", 2, 2)
    assert browser.evaluate("document.getElementById('tooltip').hidden") is True
