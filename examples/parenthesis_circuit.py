"""The closing-parenthesis circuit of the bundled model.

Finds the last-layer features that drive the ")" prediction (decoder direction through the
final layer norm and unembedding, and activation at positions where ")" is forced), then
builds the circuit from those features back to the input tokens over every ")"-predicting
position of held-out documents. Prints the feature ranking and the circuit as tables and
writes the circuit (JSON, CSV tables, diagram) and its faithfulness curve under out/parens/.

    python examples/parenthesis_circuit.py [--method acdc|hybrid|attribution] [--n-texts 8]
"""

from __future__ import annotations

import argparse

from featcircuits.cli.experiments import add_circuit_arguments, run_circuit_task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_circuit_arguments(parser, out="out/parens")
    parser.add_argument("--n-texts", type=int, default=8, help="documents (default 8)")
    parser.add_argument("--n-targets", type=int, default=2,
                        help="last-layer ')' features to explain (default 2)")
    run_circuit_task("parens", parser.parse_args(argv))


if __name__ == "__main__":
    main()
