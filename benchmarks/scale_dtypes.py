"""bf16 / fp16 circuits against float32 on the scale benchmark's model and dictionaries.

    nice python benchmarks/scale_dtypes.py [--dtype bfloat16|float16] [--device cpu|cuda]
                                           [--layers 2] [--features 4096] [--prompts 8]

The Pythia-70M-shaped GPT-NeoX and random 32,768-feature SAEs of ``benchmarks/scale.py``
(``--layers``, ``--features``, ``--prompts`` shrink them), built in float32 and run through
``circuit_runs``, ``node_attributions`` and ``attribution_circuit(tau=1e-3, max_nodes=50)``;
then the same weights cast to ``--dtype`` and run again. Printed: each run's time, the
metric, and the agreement — the correlation of node attributions over every candidate node,
the share of float32's kept nodes (largest ``|effect|`` per site) the low-precision run
keeps, the edge sets' Jaccard index, and the median / 90th-percentile relative difference
of the weights of edges both graphs have.

On a CPU without bf16/fp16 matrix instructions (AVX2 only, as this project's machine) torch
falls back to a scalar kernel, about 190 times slower than float32 for the SAE's
``[512, 512] @ [512, 32768]`` encode: the defaults are therefore the ``--small`` shape of
``scale.py``; on CUDA pass ``--layers 6 --features 32768 --prompts 32`` for the full shape.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale import build_model, build_saes
from featcircuits.circuits.attribution import keep_nodes, node_attributions
from featcircuits.circuits.discovery import attribution_circuit, circuit_runs
from featcircuits.circuits.targets import LogitTarget
from featcircuits.engine.settings import RunSettings


def run(model, saes, ids, device: str) -> dict:
    """Runs, node attributions and the 50-node attribution circuit, timed."""
    start = time.perf_counter()
    runs = circuit_runs(model, saes, ids.to(device), targets=LogitTarget(0, minus=1,
                                                                        positions="final"),
                        settings=RunSettings(max_memory="1GB", progress=False))
    effects = node_attributions(runs, ablation="zero")
    graph = attribution_circuit(runs, tau=1e-3, max_nodes=50)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "metric": runs.metric_value,
            "effects": effects, "kept": keep_nodes(effects, 1e-3, 50), "graph": graph}


def agreement(full: dict, low: dict) -> dict:
    """Node-attribution correlation, kept-node overlap, edge Jaccard and weight differences."""
    common = sorted(set(full["effects"]) & set(low["effects"]))
    a = torch.tensor([full["effects"][k] for k in common], dtype=torch.float64)
    b = torch.tensor([low["effects"][k] for k in common], dtype=torch.float64)
    correlation = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    kept_full = {node for nodes in full["kept"].values() for node in nodes}
    kept_low = {node for nodes in low["kept"].values() for node in nodes}
    edges_full, edges_low = set(full["graph"].edges), set(low["graph"].edges)
    both = edges_full & edges_low
    relative = torch.tensor([abs(low["graph"].edges[e]["weight"] - full["graph"].edges[e][
        "weight"]) / max(abs(full["graph"].edges[e]["weight"]), 1e-12) for e in both]
        or [float("nan")], dtype=torch.float64)
    return {"nodes": len(common), "correlation": correlation,
            "kept_overlap": len(kept_full & kept_low) / max(1, len(kept_full)),
            "edge_jaccard": len(both) / max(1, len(edges_full | edges_low)),
            "edges": (len(edges_full), len(edges_low), len(both)),
            "median_relative": float(relative.median()),
            "p90_relative": float(torch.quantile(relative, 0.9)) if len(both) else float("nan"),
            "metric": (full["metric"], low["metric"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"load: {os.getloadavg()}; torch threads {torch.get_num_threads()}; {args.layers} "
          f"layers, {3 * args.layers} SAEs x {args.features} features, {args.prompts} prompts "
          f"x 16 tokens; float32 then {args.dtype} on {args.device}", flush=True)
    ids = torch.randint(2, 209, (args.prompts, 16), generator=torch.Generator().manual_seed(2))
    model = build_model(args.layers, dtype=torch.float32, device=args.device)
    saes = build_saes(args.layers, args.features, dtype=torch.float32, device=args.device)
    full = run(model, saes, ids, args.device)
    print(f"  float32: {full['seconds']:.1f} s, metric {full['metric']:.4f}, "
          f"{full['graph'].number_of_edges()} edges", flush=True)
    dtype = getattr(torch, args.dtype)
    model._module.to(dtype)
    saes = {site: sae.to(dtype) for site, sae in saes.items()}
    low = run(model, saes, ids, args.device)
    print(f"  {args.dtype}: {low['seconds']:.1f} s, metric {low['metric']:.4f}, "
          f"{low['graph'].number_of_edges()} edges")
    result = agreement(full, low)
    print(f"agreement over {result['nodes']} candidate nodes: correlation of node "
          f"attributions {result['correlation']:.4f}; float32's kept nodes kept "
          f"{100 * result['kept_overlap']:.1f} %; edges (float32, {args.dtype}, both) "
          f"{result['edges']}, Jaccard {result['edge_jaccard']:.3f}; relative weight "
          f"difference on common edges: median {result['median_relative']:.3g}, 90th "
          f"percentile {result['p90_relative']:.3g}; metric {result['metric'][0]:.4f} vs "
          f"{result['metric'][1]:.4f}")


if __name__ == "__main__":
    main()
