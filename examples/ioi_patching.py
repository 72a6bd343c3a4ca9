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

Writes out/ioi/results.csv and out/ioi/curves.png and prints a table. Every flag of
``featcircuits ioi`` is a keyword of ``featcircuits.experiments.run_ioi_patching``.
"""

from __future__ import annotations

import argparse
import sys

from featcircuits.engine.settings import RunSettings
from featcircuits.experiments import run_ioi_patching


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="bundled name, folder or hub id")
    parser.add_argument("--dictionaries", default=None,
                        help="folder of dictionary sets <set>/<site>/ (default: the model's)")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="layers to patch (default: all)")
    parser.add_argument("--n-prompts", type=int, default=16, help="prompt pairs (default 16)")
    parser.add_argument("--out", default="out/ioi", help="output folder (default out/ioi)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    # the library call: keyword arguments in, an IOIResult out (featcircuits ioi does the same)
    result = run_ioi_patching(args.model, dictionaries=args.dictionaries, layers=args.layers,
                              n_prompts=args.n_prompts, out=args.out,
                              settings=RunSettings(progress=not args.quiet))
    print(result.report())
    print(f"\nwrote {result.paths['results']} and {result.paths['curves']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
