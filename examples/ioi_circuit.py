"""The IOI logit-difference circuit of the bundled model.

Prompt pairs from the bundled featcircuits/data/ioi/prompts.jsonl (by default the template
with the most pairs, so token positions line up and nodes can be position-specific); the
target is the logit difference IO − S at the final position. Prints the circuit as a table with its
faithfulness and writes it (JSON, CSV tables, diagram) under out/ioi_circuit/.

    python examples/ioi_circuit.py [--method hybrid|acdc|attribution] [--n-prompts 16]
"""

from __future__ import annotations

import argparse

from featcircuits.cli.experiments import add_circuit_arguments, run_circuit_task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_circuit_arguments(parser, out="out/ioi_circuit")
    parser.add_argument("--prompts", default=None,
                        help="prompt pairs .jsonl/.csv (default: the bundled IOI pairs)")
    parser.add_argument("--corruption", default="abc", help="abc | flip | all (default abc)")
    parser.add_argument("--template", default="largest",
                        help="template id, 'largest' (default) or 'all'")
    parser.add_argument("--n-prompts", type=int, default=16, help="prompt pairs (default 16)")
    parser.add_argument("--no-positional", dest="positional", action="store_false",
                        help="one node per feature instead of per (feature, position)")
    run_circuit_task("ioi", parser.parse_args(argv))


if __name__ == "__main__":
    main()
