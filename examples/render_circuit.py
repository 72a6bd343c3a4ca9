"""Render a circuit graph in every format featcircuits writes.

    python examples/render_circuit.py --out out/render            # the hand-made example
    python examples/render_circuit.py --random 50 150 --seed 0    # a random 50-node circuit

docs/img/circuit_example.png and docs/img/circuit_random50.png come from
``--formats png --palette-png`` (the second with ``--random 50 150 --dpi 100``).

Writes circuit.png / .svg / .pdf (matplotlib), circuit.dot (Graphviz), circuit.html
(self-contained, interactive) and circuit.json (circuit-tracer / Neuronpedia). The
graphs are synthetic: their numbers are invented, not measured on a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from featcircuits.render import (
    example_circuit,
    random_layered_circuit,
    render_circuit,
    to_html,
    write_dot,
    write_neuronpedia_json,
)
from featcircuits.writes import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/render"), help="output folder")
    parser.add_argument(
        "--random",
        nargs=2,
        type=int,
        metavar=("NODES", "EDGES"),
        help="render a seeded random circuit instead of the hand-made example",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpi", type=float, default=150.0)
    parser.add_argument(
        "--palette-png",
        action="store_true",
        help="store the PNG with a 256-colour palette (about 3x smaller; used for docs/img)",
    )
    parser.add_argument(
        "--formats",
        default="png,svg,pdf,dot,html,json",
        help="comma-separated subset of png,svg,pdf,dot,html,json",
    )
    args = parser.parse_args()

    if args.random:
        graph = random_layered_circuit(*args.random, seed=args.seed)
        title = f"Random synthetic circuit: {args.random[0]} nodes, {args.random[1]} edges (seed {args.seed})"
    else:
        graph = example_circuit()
        title = "Synthetic IOI-shaped circuit (invented numbers)"
    formats = set(args.formats.split(","))
    out = args.out
    for suffix in ("png", "svg", "pdf"):
        if suffix in formats:
            render_circuit(graph, title=title, path=out / f"circuit.{suffix}", dpi=args.dpi)
    if "dot" in formats:
        write_dot(graph, out / "circuit.dot", title=title)
    if "html" in formats:
        to_html(graph, out / "circuit.html", title=title)
    if "json" in formats:
        write_neuronpedia_json(graph, out / "circuit.json", slug="featcircuits-example")
    if args.palette_png and "png" in formats:
        from PIL import Image  # installed with matplotlib

        with Image.open(out / "circuit.png") as image:
            small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        with atomic_path(out / "circuit.png") as tmp:
            small.save(tmp, format="PNG", optimize=True)
    for path in sorted(out.iterdir()):
        print(f"{path}  ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
