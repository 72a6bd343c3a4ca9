"""IOI feature patching: how few features of each basis restore clean behaviour?

Reproduces the comparison of Cunningham et al. (2023): on the corrupted IOI run (a third
name replaces the subject, the "ABC" corruption), patch features of a dictionary from the
clean run at one residual-stream site, x′ = x̄ + Σ_{i∈F}(cᵢ − c̄ᵢ)fᵢ, and find the smallest
set F that brings the answer distribution back (greedy backward elimination on KL).
Bases: the bundled SAEs (two sparsities), PCA, ICA (when fitted), neurons and a random
rotation, at every layer.

    python examples/ioi_patching.py                      # bundled model, ~1-2 minutes
    python examples/ioi_patching.py --model EleutherAI/pythia-70m-deduped \\
        --dictionaries path/to/dictionaries --layers 2 3  # where the hub is reachable

Writes out/ioi/results.csv and out/ioi/curves.png and prints a table.
"""

from __future__ import annotations

import argparse
import sys

from featcircuits.experiments.ioi import add_ioi_arguments, run_ioi_example


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ioi_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    run_ioi_example(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
