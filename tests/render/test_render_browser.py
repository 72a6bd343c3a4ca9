"""The interactive HTML page, exercised in a real headless chromium over the DevTools protocol.

Skipped (with the reason) only where no chromium binary or websocket-client is installed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage

from featcircuits.render import random_layered_circuit, to_html
from featcircuits.render.shares import slider_keys
from featcircuits.render.style import effect_hex, symmetric_limit

pytest.importorskip(
    "websocket", reason="websocket-client is not installed (pip install websocket-client)"
)
from tests.support.cdp import Browser, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary found (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def circuit():
    return random_layered_circuit(50, 150, seed=3)


@pytest.fixture(scope="module")
def page(circuit, tmp_path_factory):
    nodes = sorted(circuit.nodes)
    dashboards = {
        node: f'<div class="dash-test"><b>Dashboard</b> of {node}: histogram here</div>'
        for node in nodes[::2]
    }
    path = tmp_path_factory.mktemp("html") / "circuit.html"
    to_html(circuit, path, dashboards=dashboards)
    with Browser(CHROMIUM, width=1500, height=1300) as browser:
        browser.navigate(path.as_uri())
        yield browser, dashboards


def _screenshot(browser) -> np.ndarray:
    return mimage.imread(io.BytesIO(browser.screenshot()), format="png")[..., :3]


def _node_centres(browser) -> dict[str, tuple[float, float]]:
    return browser.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('svg .node')).map(n => {"
        " const r = n.querySelector('.shape').getBoundingClientRect();"
        " return [n.dataset.id, [r.left + r.width / 2, r.top + r.height / 2]]; }))"
    )


def test_page_loads_only_itself(page):
    browser, _ = page
    urls = browser.requested_urls()
    assert urls, "the navigation itself should be recorded"
    assert all(url.startswith(("file://", "data:")) for url in urls), urls


def test_dom_has_one_element_per_node_and_edge(page, circuit):
    browser, _ = page
    assert (
        browser.evaluate("document.querySelectorAll('svg .node').length")
        == circuit.number_of_nodes()
    )
    assert (
        browser.evaluate("document.querySelectorAll('svg .edge').length")
        == circuit.number_of_edges()
    )
    ids = browser.evaluate(
        "Array.from(document.querySelectorAll('svg .node')).map(n => n.dataset.id)"
    )
    assert sorted(ids) == sorted(circuit.nodes)
    assert browser.evaluate("document.getElementById('panel').hidden") is True


def test_screenshot_shows_nodes_in_their_colours(page, circuit):
    browser, _ = page
    pixels = _screenshot(browser)
    centres = _node_centres(browser)
    limit = symmetric_limit(a.get("effect") for _, a in circuit.nodes(data=True))
    height, width, _ = pixels.shape
    checked = 0
    for node, (x, y) in centres.items():
        attrs = circuit.nodes[node]
        if (
            attrs["kind"] != "feature"
        ):  # error nodes are hatched; inputs/outputs checked by shape count
            continue
        assert 0 <= x < width and 0 <= y < height, f"{node} is outside the screenshot"
        expected = np.array(mcolors.to_rgb(effect_hex(attrs.get("effect"), limit)))
        patch = pixels[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3].reshape(-1, 3)
        assert np.abs(patch - expected).max() < 0.04, (node, patch.mean(axis=0), expected)
        checked += 1
    assert checked >= 30
    # the strongest-effect node's colour covers about one disc (r = 9 px) per such node
    strongest = max(circuit.nodes, key=lambda n: abs(circuit.nodes[n].get("effect") or 0))
    colour = np.array(mcolors.to_rgb(effect_hex(circuit.nodes[strongest]["effect"], limit)))
    matches = int((np.abs(pixels - colour).max(axis=2) < 0.03).sum())
    assert 150 < matches < 2000, matches
    non_white = int((pixels.min(axis=2) < 0.9).sum())
    assert non_white > 20000, non_white


def test_hover_highlights_node_and_its_edges(page, circuit):
    browser, _ = page
    node = max(circuit.nodes, key=lambda n: (circuit.degree(n), n))
    x, y = _node_centres(browser)[node]
    browser.mouse("mouseMoved", x, y)
    assert browser.evaluate("document.querySelector('#diagram svg').classList.contains('focus')")
    assert browser.evaluate("document.querySelectorAll('svg .edge.hl').length") == circuit.degree(
        node
    )
    tooltip = browser.evaluate(
        "[document.getElementById('tooltip').hidden, document.getElementById('tooltip').textContent]"
    )
    assert tooltip[0] is False and node in tooltip[1]
    browser.mouse("mouseMoved", 3, 3)
    assert browser.evaluate("document.querySelectorAll('svg .hl').length") == 0
    assert browser.evaluate("document.getElementById('tooltip').hidden") is True


def test_click_opens_dashboard_panel(page, circuit):
    browser, dashboards = page
    centres = _node_centres(browser)
    with_dashboard = next(n for n in sorted(dashboards) if circuit.nodes[n]["kind"] == "feature")
    without = next(
        n
        for n in sorted(circuit.nodes)
        if n not in dashboards and circuit.nodes[n]["kind"] == "feature"
    )
    for node in (with_dashboard, without):
        browser.evaluate("document.getElementById('panel-close').click()")  # it narrows the view
        x, y = centres[node]
        hit = browser.evaluate(f"document.elementFromPoint({x}, {y}).closest('.node').dataset.id")
        assert hit == node
        browser.click(x, y)
        state = browser.evaluate(
            "(() => { const p = document.getElementById('panel');"
            " const shown = Array.from(p.querySelectorAll('.dashboard')).filter(d => !d.hidden);"
            " return [getComputedStyle(p).display, p.getBoundingClientRect().width,"
            " document.getElementById('panel-title').textContent, shown.length,"
            " shown.length ? shown[0].innerText : '']; })()"
        )
        display, panel_width, panel_title, n_shown, text = state
        assert display != "none" and panel_width > 100
        assert panel_title == node and n_shown == 1
        if node in dashboards:
            assert f"Dashboard of {node}: histogram here" in text
        else:
            assert (
                "kind" in text and "feature" in text and str(circuit.nodes[node]["feature"]) in text
            )
    browser.evaluate("document.getElementById('panel-close').click()")
    assert browser.evaluate("getComputedStyle(document.getElementById('panel')).display") == "none"


def test_edge_slider_hides_edges_of_little_influence(page, circuit):
    browser, _ = page
    browser.mouse("mouseMoved", 3, 3)  # no node under the pointer: nothing highlighted or faded
    # screen points at 30..70 % of every edge's length, to compare pixels before and after
    samples = browser.evaluate(
        "Array.from(document.querySelectorAll('svg .edge')).map(e => {"
        " const n = e.getTotalLength(); const m = e.getScreenCTM();"
        " return [[e.dataset.source, e.dataset.target], [0.3, 0.4, 0.5, 0.6, 0.7].map(f => {"
        "   const p = e.getPointAtLength(f * n).matrixTransform(m); return [p.x, p.y]; })]; })"
    )
    before = _screenshot(browser)
    keys = slider_keys(circuit)
    share = 0.9
    browser.evaluate(
        f"(() => {{ const s = document.getElementById('edge-share'); s.value = '{share}';"
        " s.dispatchEvent(new Event('input')); })()"
    )
    weak = {edge for edge, (_, edge_key) in keys.edges.items() if edge_key >= share}
    hidden = browser.evaluate(
        "Array.from(document.querySelectorAll('svg .edge'))"
        ".filter(e => getComputedStyle(e).visibility !== 'visible')"
        ".map(e => [e.dataset.source, e.dataset.target])"
    )
    assert {tuple(e) for e in hidden} == weak and 20 < len(weak) < 130
    total = circuit.number_of_edges()
    assert browser.evaluate("document.getElementById('shown-count').textContent") == (
        f"{circuit.number_of_nodes()} / {circuit.number_of_nodes()} nodes, "
        f"{total - len(weak)} / {total} edges shown"
    )
    after = _screenshot(browser)

    def differs(x: float, y: float) -> bool:
        return bool(np.abs(before[int(y), int(x)] - after[int(y), int(x)]).max() > 0.02)

    gone = [points for edge, points in samples if tuple(edge) in weak]
    kept = [p for edge, points in samples if tuple(edge) not in weak for p in points]
    vanished = sum(any(differs(x, y) for x, y in points) for points in gone) / len(gone)
    strong_changed = sum(differs(x, y) for x, y in kept) / len(kept)
    print(
        f"hidden edges that vanished: {vanished:.2f}; kept-edge pixels that changed: {strong_changed:.2f}"
    )
    assert vanished > 0.9  # hidden edges left the picture
    assert strong_changed < 0.2  # kept edges are still drawn (a few pixels crossed hidden ones)
    browser.evaluate(
        "(() => { const s = document.getElementById('edge-share'); s.value = '1';"
        " s.dispatchEvent(new Event('input')); })()"
    )
    assert browser.evaluate("document.querySelectorAll('svg g.cut').length") == 0
