"""How responsive the HTML viewer's pruning slider is on a large circuit (prints numbers).

    python benchmarks/viewer.py [--nodes 5000] [--in-degree 3] [--seed 0]

Builds a seeded layered circuit (8 rows, 16 positions; every node has ``--in-degree``
incoming edges from the two rows below at earlier or equal positions, the output reads
the top row), writes it with ``to_html`` and opens it in headless chromium (the test
driver ``tests/support/cdp.py``; run from the repository root). Then it moves the node
slider: a fine sweep in the slider's own steps (0.01) down and up, and jumps between
far-apart shares. Each step is timed from the input event until styles are recomputed,
and until the next frame is painted. The graph's numbers are invented.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featcircuits.render import to_html
from tests.support.cdp import Browser, find_chromium

STEP = """(async () => {
  const s = document.getElementById('node-share');
  const t0 = performance.now();
  s.value = '%s'; s.dispatchEvent(new Event('input'));
  document.body.getBoundingClientRect();
  const t1 = performance.now();
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  return [t1 - t0, performance.now() - t0];
})()"""


def layered_graph(n_nodes: int, in_degree: int, seed: int, n_positions: int = 16) -> nx.DiGraph:
    """A circuit-shaped DAG without the O(n^2) candidate list of random_layered_circuit."""
    rng = random.Random(seed)
    graph = nx.DiGraph(format_version=1, target="synthetic", metric="logit_diff",
                       model="synthetic", prompt_tokens=[f" t{i}" for i in range(n_positions)])
    rows: list[list[str]] = [[] for _ in range(9)]
    for position in range(n_positions):
        node = f"input@{position}"
        graph.add_node(node, kind="input", site="embed", layer=-1, feature=None,
                       position=position, activation=None, effect=rng.uniform(-1, 1), label="")
        rows[0].append(node)
    count = n_positions
    while count < n_nodes - 1:
        r = rng.randrange(1, 9)
        layer, site = (r - 1) // 2, ("mlp_out", "resid_out")[(r - 1) % 2]
        feature, position = rng.randrange(16384), rng.randrange(n_positions)
        node = f"{site}.{layer}/{feature}@{position}"
        if node in graph:
            continue
        graph.add_node(node, kind="feature", site=f"{site}.{layer}", layer=layer,
                       feature=feature, position=position, activation=rng.uniform(0.1, 5),
                       effect=rng.gauss(0, 1), label=rng.choice(["names", "verbs", "Mary"]))
        rows[r].append(node)
        count += 1
    graph.add_node("output/logit_diff", kind="output", site=None, layer=4, feature=None,
                   position=None, activation=None, effect=2.0, label="logit diff")
    for r in range(1, 9):
        below = [n for rr in (r - 1, r - 2) if rr >= 0 for n in rows[rr]]
        for node in rows[r]:
            here = graph.nodes[node]["position"]
            sources = [n for n in rng.sample(below, min(len(below), 8 * in_degree))
                       if graph.nodes[n]["position"] <= here][:in_degree]
            for source in sources:
                graph.add_edge(source, node, weight=rng.choice((-1, 1))
                               * min(max(rng.lognormvariate(-2, 1), 0.01), 1.0))
    for node in rows[8]:
        graph.add_edge(node, "output/logit_diff", weight=rng.gauss(0, 1))
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--in-degree", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no chromium found")
    graph = layered_graph(args.nodes, args.in_degree, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "viewer.html"
        start = time.perf_counter()
        page = to_html(graph, path)
        print(f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges: to_html "
              f"{time.perf_counter() - start:.1f} s, {len(page) / 1e6:.1f} MB")
        with Browser(chromium, width=1400, height=900, timeout=120) as browser:
            start = time.perf_counter()
            browser.navigate(path.as_uri())
            print(f"page loaded in {time.perf_counter() - start:.1f} s")
            fine = [browser.evaluate(STEP % (i / 100)) for i in
                    [*range(100, 4, -1), *range(5, 101)]]
            frames = sorted(f for _, f in fine)
            print(f"fine sweep, {len(fine)} steps of 0.01: frame median "
                  f"{statistics.median(frames):.0f} ms, 90th percentile "
                  f"{frames[int(0.9 * len(frames))]:.0f} ms, max {frames[-1]:.0f} ms")
            jumps = [(s, *browser.evaluate(STEP % s)) for s in
                     (1.0, 0.95, 0.8, 0.5, 0.2, 0.05, 0.5, 0.8, 0.95, 0.99, 1.0)]
            print("jumps (share: style ms / frame ms): "
                  + ", ".join(f"{s}: {a:.0f}/{b:.0f}" for s, a, b in jumps))
            print("shown at the end:", browser.evaluate(
                "document.getElementById('shown-count').textContent"))


if __name__ == "__main__":
    main()
