"""Helpers shared by the benchmark scripts (not part of the library).

``compare_methods`` runs exact ACDC, attribution and the hybrid on one set of cached runs
and measures speed and agreement (``benchmarks/circuits.py``).
"""

from __future__ import annotations

import time

import pandas as pd

from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit, hybrid_circuit
from featcircuits.engine.runs import CircuitRuns


def compare_methods(runs: CircuitRuns, *, tau: float, candidates: dict | None,
                    ablation: str = "mean",
                    relative_tau: bool = True, max_nodes: int | None = None, top: int = 50,
                    hybrid_screen: float | None = None, hybrid_node_tau: float | None = None,
                    repeats: int = 1) -> dict:
    """Exact ACDC, attribution and hybrid on the same cached runs and candidate set.

    Returns wall times (best of ``repeats``, cached clean run excluded), graph sizes, the
    Spearman correlation of edge weights (exact vs attribution) over every candidate pair
    and over the exact circuit's edges, and the overlap of the hybrid's and the exact
    circuit's top-``top`` edges.
    """
    from featcircuits.circuits.compare import all_edge_weights
    from featcircuits.graph import edge_list

    rows: dict[str, int] = {}

    def timed(function, name):
        best, result = float("inf"), None
        for _ in range(repeats):
            before = runs.rows_run
            start = time.perf_counter()
            result = function()
            best = min(best, time.perf_counter() - start)
            rows[name] = runs.rows_run - before
        return best, result

    common = {"tau": tau, "ablation": ablation, "candidates": candidates,
              "relative_tau": relative_tau}
    t_exact, exact = timed(lambda: acdc_circuit(runs, node_effects=False, **common), "exact")
    t_attr, attr = timed(lambda: attribution_circuit(runs, max_nodes=max_nodes, **common),
                         "attribution")
    screen = {} if hybrid_screen is None else {"screen": hybrid_screen}  # None: the default
    t_hybrid, hybrid = timed(lambda: hybrid_circuit(runs, max_nodes=max_nodes,
                                                    node_tau=hybrid_node_tau, **screen,
                                                    **common),
                             "hybrid")
    weights = all_edge_weights(runs, ablation=ablation, candidates=candidates)
    pairs = pd.DataFrame({"exact": pd.Series(weights["exact"]),
                          "attribution": pd.Series(weights["attribution"])}).dropna()
    in_circuit = [(u, v) for u, v in exact.edges]
    keyed = {(_node_text(u), _node_text(v)): (u, v) for u, v in weights["exact"]}
    circuit_pairs = pairs.loc[[keyed[e] for e in in_circuit if e in keyed]] if in_circuit \
        else pairs.iloc[:0]
    k = min(top, exact.number_of_edges())
    exact_top = {(u, v) for u, v, _ in edge_list(exact)[:k]}
    hybrid_top = {(u, v) for u, v, _ in edge_list(hybrid)[:k]}
    return {
        "seconds_exact": t_exact, "seconds_attribution": t_attr, "seconds_hybrid": t_hybrid,
        "rows_exact": rows["exact"], "rows_attribution": rows["attribution"],
        "rows_hybrid": rows["hybrid"],
        "speedup_attribution": t_exact / t_attr, "speedup_hybrid": t_exact / t_hybrid,
        "edges_exact": exact.number_of_edges(), "edges_attribution": attr.number_of_edges(),
        "edges_hybrid": hybrid.number_of_edges(),
        "spearman_all_pairs": float(pairs["exact"].corr(pairs["attribution"],
                                                        method="spearman")),
        "n_pairs": len(pairs),
        "spearman_exact_edges": float(circuit_pairs["exact"].corr(
            circuit_pairs["attribution"], method="spearman")) if len(circuit_pairs) > 2
        else float("nan"),
        "top_k": k, "hybrid_top_agreement": len(exact_top & hybrid_top) / k if k else
        float("nan"),
        "hybrid_verified": hybrid.graph["verified_edges"],
        "hybrid_wrong_sign": hybrid.graph["attribution_wrong_sign"],
        "hybrid_wrong_threshold": hybrid.graph["attribution_wrong_threshold"],
        "exact_graph": exact, "attribution_graph": attr, "hybrid_graph": hybrid,
    }


def _node_text(node) -> str:
    from featcircuits.circuits.nodes import node_id

    return node if isinstance(node, str) else node_id(node)
