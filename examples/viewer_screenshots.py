"""Screenshots of the HTML viewer for docs/rendering.md (run by ``make docs``).

    python examples/viewer_screenshots.py --out docs/img

Opens three pages in headless chromium at 1400 x 900 through the test suite's DevTools
driver (``tests/support/cdp.py``; run from the repository root, with websocket-client
installed) and saves what a reader sees:

- ``viewer_small.png``: the hand-made example, as it opens, with the pointer on
  feature #5 (hover card: label, top context, promoted / suppressed tokens);
- ``viewer_ioi.png``: ``featcircuits circuit ioi``'s circuit after ``prune``
  (tests/fixtures/ioi_circuit_pruned.json), as it opens, searching ``#145``;
- ``viewer_random2000.png``: a 2,000-node random layered graph, as it opens (pruned to
  80 % of the influence, fitted to the window).

Without chromium or websocket-client it says so and leaves the images as they are
(exit code 0), so the docs still build.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featcircuits.graph import read_json
from featcircuits.render import example_circuit, random_layered_circuit, to_html
from featcircuits.writes import atomic_path


def _example():
    graph = example_circuit()
    node = graph.nodes["resid_out.3/5@13"]  # what dashboards.label_features stores
    node["top_contexts"] = ["When Mary and John went to the store, John gave a drink to⟦ Mary⟧",
                            "After Lisa and Tom left, Tom handed the keys to⟦ Lisa⟧"]
    node["logit_up"] = [" Mary", " Lisa", " her"]
    node["logit_down"] = [" John", " Tom", " him"]
    return graph


def _save_png(data: bytes, path: Path) -> None:
    import io

    from PIL import Image  # installed with matplotlib

    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path) as tmp:
        small.save(tmp, format="PNG", optimize=True)
    print(f"{path}  ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    try:
        from tests.support.cdp import Browser, find_chromium
    except ImportError as exc:
        print(f"viewer screenshots skipped: {exc} (pip install websocket-client)")
        return
    chromium = find_chromium()
    if chromium is None:
        print("viewer screenshots skipped: no chromium (apt-get install chromium)")
        return
    pages = {
        "viewer_small": (_example(), "resid_out.3/5@13", None),
        "viewer_ioi": (read_json(ROOT / "tests" / "fixtures" / "ioi_circuit_pruned.json"),
                       None, "#145"),
        "viewer_random2000": (random_layered_circuit(2000, 5000, n_positions=10, seed=1),
                              None, None),
    }
    folder = Path(tempfile.mkdtemp(prefix="featcircuits-viewer-"))
    try:
        for name, (graph, hover, search) in pages.items():
            page = folder / f"{name}.html"
            to_html(graph, page)
            with Browser(chromium, width=1400, height=900, timeout=120) as browser:
                browser.navigate(page.as_uri() + (f"#find={quote(search)}" if search else ""))
                if hover:
                    x, y = browser.evaluate(
                        f"(() => {{ const r = document.querySelector('.node[data-id=\"{hover}\"]"
                        " .shape').getBoundingClientRect(); return [r.x + r.width / 2,"
                        " r.y + r.height / 2]; })()")
                    browser.mouse("mouseMoved", x, y)
                browser.evaluate("new Promise(r => requestAnimationFrame(() => setTimeout(r, 100)))")
                _save_png(browser.screenshot(), args.out / f"{name}.png")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
