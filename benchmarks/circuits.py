"""Circuit discovery speed and agreement, side by side in one run (prints numbers).

    python benchmarks/circuits.py [--n-texts 8] [--per-site 0] [--tau 0.03] [--repeats 1]

On the bundled model's closing-parenthesis circuit (see examples/parenthesis_circuit.py),
with one shared cached clean run and the same candidate set for every method (every
feature active on the data and every input token, plus error nodes; or with ``--per-site``
the features with the largest attributed effect at each site):

1. exact ACDC (every candidate ablated, batched), attribution (gradients), hybrid
   (attribution-ranked edges verified by ablation): wall time of each;
2. Spearman rank correlation of exact vs attribution edge weights (pandas), over every
   candidate pair and over the exact circuit's edges;
3. the share of the exact circuit's top-50 edges that the hybrid circuit also has in its
   top 50.

Targets: attribution >= 20x faster than exact; hybrid top-50 agreement >= 90%.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    from _common import compare_methods

    from featcircuits.engine.settings import RunSettings
    from featcircuits.experiments.circuits import candidate_set
    from featcircuits.experiments.parens import parens_setup

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--set", default=None, help="dictionary set (default sae-sparse)")
    parser.add_argument("--n-texts", type=int, default=8)
    parser.add_argument("--n-targets", type=int, default=2)
    parser.add_argument("--per-site", type=int, default=0,
                        help="candidate features per site, the largest attributed effects "
                        "(default 0: every active feature)")
    parser.add_argument("--tau", type=float, default=0.03,
                        help="edge threshold relative to the downstream node's magnitude")
    parser.add_argument("--ablation", default="mean")
    parser.add_argument("--hybrid-screen", type=float, default=None,
                        help="hybrid: verify attributed edges above screen × tau (default: the "
                        "library default, 0.25)")
    parser.add_argument("--hybrid-node-tau", type=float, default=None,
                        help="hybrid: node threshold as a fraction of the target "
                        "(default tau / 10, the library default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    runs, _, data = parens_setup(args.model, set_name=args.set, n_texts=args.n_texts,
                                 n_targets=args.n_targets, settings=RunSettings(progress=False))
    setup = time.perf_counter() - start
    from featcircuits.circuits.nodes import candidate_nodes, upstream_sites

    candidates = candidate_set(runs, args.per_site, ablation=args.ablation) \
        if args.per_site > 0 else None
    tau = args.tau
    n_candidates = sum(
        len(candidate_nodes(runs, site, ablation=args.ablation, positional=False,
                            candidates=candidates, errors=False))
        for site in upstream_sites(runs))
    n_sites = len(upstream_sites(runs))
    print(f"model {args.model}: {runs.n} documents, {int(data.closing.sum())} ')' positions, "
          f"sites {runs.sites}")
    per_site = f"{args.per_site} per site" if args.per_site > 0 else "every active feature"
    print(f"candidates: {n_candidates} features and tokens ({per_site}) + "
          f"{n_sites} error nodes; relative tau = {tau:.4g}; ablation {args.ablation}; "
          f"cached clean run + gradients {setup:.1f} s (shared, not counted)")
    result = compare_methods(runs, tau=tau, candidates=candidates, ablation=args.ablation,
                             hybrid_screen=args.hybrid_screen,
                             hybrid_node_tau=args.hybrid_node_tau, repeats=args.repeats)
    print(f"\n{'method':<12}{'seconds':>10}{'edges':>8}{'sequences run':>16}")
    for name in ("exact", "attribution", "hybrid"):
        print(f"{name:<12}{result['seconds_' + name]:>10.2f}{result['edges_' + name]:>8}"
              f"{result['rows_' + name]:>16}")
    print(f"\nattribution speed-up over exact: {result['speedup_attribution']:.1f}x "
          f"(target >= 20x); hybrid: {result['speedup_hybrid']:.1f}x")
    print(f"Spearman(exact, attribution) over {result['n_pairs']} candidate pairs: "
          f"{result['spearman_all_pairs']:.3f}; over the exact circuit's edges: "
          f"{result['spearman_exact_edges']:.3f}")
    print(f"hybrid top-{result['top_k']} agreement with exact: "
          f"{100 * result['hybrid_top_agreement']:.0f}% (target >= 90%); hybrid verified "
          f"{result['hybrid_verified']} edges, attribution had the wrong sign on "
          f"{result['hybrid_wrong_sign']} and the wrong side of tau on "
          f"{result['hybrid_wrong_threshold']}")
    if args.json:
        from featcircuits.writes import atomic_write_text

        numbers = {k: v for k, v in result.items() if not k.endswith("_graph")}
        atomic_write_text(args.json, json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
