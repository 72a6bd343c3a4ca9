"""Ready-made circuit experiments: the IOI logit-difference circuit (here) and the
closing-parenthesis circuit (``featcircuits.experiments.parens``), plus what both share:
building a circuit by method name, scoring it, and writing it.

IOI. Prompt pairs from ``featcircuits/data/ioi/prompts.jsonl`` (one template, so positions line up); the
target is the logit difference IO − S at the final position.

Both experiments take keyword arguments and return a ``CircuitResult``; with ``out`` they
also write ``<name>.json``, node and edge tables, a diagram, the faithfulness curve and a
summary there. ``featcircuits circuit`` and the example scripts print
``CircuitResult.report()``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import pandas as pd

from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit, hybrid_circuit
from featcircuits.circuits.faithfulness import faithfulness, faithfulness_curve
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.engine.runs import CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import ParameterError
from featcircuits.experiments.inputs import (
    ModelSpec,
    default_dictionaries,
    load_ioi_prompts,
    resolve_model,
    seeded,
)
from featcircuits.graph import check_tau
from featcircuits.graph.io import edges_frame, write_json, write_tables
from featcircuits.writes import FileSet, atomic_files, ensure_writable_dir

__all__ = [
    "METHODS",
    "CircuitResult",
    "build_circuit",
    "candidate_set",
    "circuit_table",
    "default_dictionaries",
    "draw_circuit",
    "evaluate_circuit",
    "ioi_circuit",
    "save_circuit",
]

METHODS = ("acdc", "attribution", "hybrid")
#: circuits with more nodes are drawn pruned (default shares of ``graph.prune``)
DRAW_PRUNE_ABOVE = 40


# ------------------------------------------------------------------------- results
@dataclass
class CircuitResult:
    """What the circuit experiments return.

    Attributes:
        name: file stem of the outputs (``"parens"``, ``"ioi"``).
        title: the diagram's title.
        method, ablation: how the circuit was found and scored.
        graph: the circuit (faithfulness and completeness recorded in ``graph.graph``).
        faithfulness: ``faithfulness(runs, graph)`` for the node set.
        edge_faithfulness: the same for the edge set (path patching); empty unless asked.
        curve: faithfulness of the top-k nodes, ``faithfulness_curve(..., by="nodes")``.
        features: the parenthesis experiment's feature ranking (``None`` for IOI).
        preamble: task-specific lines printed before the circuit (data, ranking).
        paths: files written (empty without ``out``).
        seconds: wall time of the experiment.
    """

    name: str
    title: str
    method: str
    ablation: str
    graph: nx.DiGraph
    faithfulness: dict
    edge_faithfulness: dict
    curve: pd.DataFrame
    features: pd.DataFrame | None = None
    preamble: str = ""
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def report(self) -> str:
        """The text ``featcircuits circuit`` prints: preamble, the circuit's size and
        strongest edges, node (and edge) faithfulness, and the faithfulness curve."""
        graph, scores, edge_scores = self.graph, self.faithfulness, self.edge_faithfulness
        kind = "relative" if graph.graph.get("relative_tau") else "absolute"
        parts = [self.preamble] if self.preamble else []
        parts += [(f"\n{self.method} circuit ({kind} tau = {graph.graph['tau']:.4g}, ablation "
                  f"{self.ablation}): {graph.number_of_nodes()} nodes, "
                  f"{graph.number_of_edges()} edges"),
                  circuit_table(graph, 25).to_string(index=False,
                                                     float_format=lambda v: f"{v:+.4f}"),
                  (f"\nnode set, {self.ablation} ablation outside it: faithfulness "
                  f"{scores['faithfulness']:.3f}, completeness {scores['completeness']:.3f}  "
                  f"(m(M) = {scores['m_full']:.4f}, m(∅) = {scores['m_empty']:.4f}, m(C) = "
                  f"{scores['m_circuit']:.4f}, m(M∖C) = {scores['m_complement']:.4f})")]
        if edge_scores:
            parts.append(f"edge set (path patching): faithfulness "
                         f"{edge_scores['faithfulness']:.3f}, completeness "
                         f"{edge_scores['completeness']:.3f}  (m(C) = "
                         f"{edge_scores['m_circuit']:.4f}, m(M∖C) = "
                         f"{edge_scores['m_complement']:.4f})")
        parts += [("\nfaithfulness of the top-k nodes (by |effect|), every edge between them "
                  "kept:"), self.curve.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
        return "\n".join(parts)


def build_circuit(runs: CircuitRuns, method: str, *, tau: float, ablation: str,
                  positional: bool = False, relative_tau: bool = True,
                  max_nodes: int | None = None, max_verify: int | None = None) -> nx.DiGraph:
    """One circuit by ``method`` (``acdc``, ``attribution`` or ``hybrid``) on cached runs
    (``max_nodes`` per site applies to the attribution-based methods)."""
    common = {"tau": tau, "ablation": ablation, "positional": positional,
              "relative_tau": relative_tau}
    if method == "acdc":
        return acdc_circuit(runs, **common)
    if method == "attribution":
        return attribution_circuit(runs, max_nodes=max_nodes, **common)
    if method == "hybrid":
        return hybrid_circuit(runs, max_nodes=max_nodes, max_verify=max_verify, **common)
    raise ParameterError(f"unknown method {method!r}", hint=f"use one of {METHODS}")


def candidate_set(runs: CircuitRuns, per_site: int, *, ablation: str = "mean"
                  ) -> dict[str, list[int]]:
    """``{site: feature ids}``: at each upstream site the ``per_site`` active features with
    the largest attributed ``|effect|`` (one backward pass; error nodes are always
    candidates, so they are not listed). Pass it as ``candidates=`` to the discovery
    functions to run exact ACDC on a small set."""
    from featcircuits.circuits import ERROR, node_attributions

    effects = node_attributions(runs, ablation=ablation)
    chosen: dict[str, list[int]] = {}
    for (site, feature, _), value in sorted(effects.items(), key=lambda item: -abs(item[1])):
        if feature == ERROR:
            continue
        if len(chosen.setdefault(site, [])) < per_site:
            chosen[site].append(int(feature))
    return chosen


def evaluate_circuit(runs: CircuitRuns, graph: nx.DiGraph, *, name: str, title: str,
                     method: str, ablation: str, edges: bool = False,
                     features: pd.DataFrame | None = None, preamble: str = "",
                     out: str | os.PathLike[str] | None = None, start: float | None = None
                     ) -> CircuitResult:
    """Score ``graph`` (node faithfulness, and with ``edges`` the edge set's; the top-k
    curve), record the scores in ``graph.graph`` and, with ``out``, write the circuit, its
    curve, ``features`` and ``<name>_summary.txt`` there."""
    start = time.perf_counter() if start is None else start
    scores = faithfulness(runs, graph, ablation=ablation)
    edge_scores = faithfulness(runs, graph, ablation=ablation, edges=True) if edges else {}
    curve = faithfulness_curve(runs, graph, by="nodes", ablation=ablation)
    graph.graph["faithfulness_nodes"] = float(scores["faithfulness"])
    graph.graph["completeness_nodes"] = float(scores["completeness"])
    if edge_scores:
        graph.graph["faithfulness_edges"] = float(edge_scores["faithfulness"])
        graph.graph["completeness_edges"] = float(edge_scores["completeness"])
    result = CircuitResult(name, title, method, ablation, graph, scores, edge_scores, curve,
                           features, preamble)
    if out is not None:
        result.paths = _write_result(result, Path(out))
    result.seconds = time.perf_counter() - start
    return result


def _write_result(result: CircuitResult, out: Path) -> dict[str, Path]:
    """Every file of the result as one set (``atomic_files``): a kill or a full disk leaves
    the previous run's files or this run's, never a mix."""
    name, graph, scores = result.name, result.graph, result.faithfulness
    with atomic_files(out) as files:
        paths = _circuit_files(files, graph, name, curve=result.curve, title=result.title)
        if result.features is not None:
            result.features.to_csv(files.path(f"{name}_features.csv"), index=False,
                                   float_format="%.6g")
            paths["features"] = out / f"{name}_features.csv"
        summary = "\n".join(f"{key}: {Path(path).name}" for key, path in paths.items())
        edge_scores = result.edge_faithfulness
        edge_line = (f"edges: faithfulness {edge_scores['faithfulness']:.6f}, completeness "
                     f"{edge_scores['completeness']:.6f}\n" if edge_scores else "")
        files.path(f"{name}_summary.txt").write_text(
            f"{result.title}\nmethod {result.method}, tau {graph.graph['tau']:.6g}\n"
            f"nodes: faithfulness {scores['faithfulness']:.6f}, completeness "
            f"{scores['completeness']:.6f}\n{edge_line}"
            f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges\n"
            f"{summary}\n", encoding="utf-8")  # no timings or absolute paths: same seed, same bytes
    return paths


# ------------------------------------------------------------------------------ IOI
def ioi_circuit(
    model: ModelSpec = "tiny",
    *,
    device: str = "cpu",
    dtype: str | None = None,
    remote: bool | str = False,
    dictionaries: str | os.PathLike[str] | None = None,
    set_name: str | None = None,
    prompts: str | os.PathLike[str] | None = None,
    corruption: str = "abc",
    template: str = "largest",
    n_prompts: int = 16,
    positional: bool = True,
    method: str = "hybrid",
    tau: float = 0.01,
    relative_tau: bool = True,
    ablation: str | None = None,
    max_nodes: int | None = None,
    edges: bool = False,
    out: str | os.PathLike[str] | None = None,
    settings: RunSettings | None = None,
) -> CircuitResult:
    """The IOI logit-difference circuit (IO − S at the final position), from the token
    embedding through every dictionary site.

    Args:
        model: bundled name, checkpoint folder or hub id (loaded with ``device``, ``dtype``,
            ``remote``), or a loaded model.
        dictionaries, set_name: folder of sets ``<set>/<site>/`` (default: the
            checkpoint's) and the set to use (default: ``preferred_set``).
        prompts, corruption: prompt pairs (default ``featcircuits/data/ioi/prompts.jsonl``) and which
            corruption rows (``abc``, ``flip``, ``all``).
        template: template id, ``"largest"`` (the one with most pairs) or ``"all"``.
        n_prompts: the first ``n_prompts`` pairs of that template.
        positional: one node per (feature, position) when all prompts have one length.
        method, tau, relative_tau, max_nodes: discovery (``build_circuit``).
        ablation: for discovery and faithfulness (default ``position_mean`` for positional
            circuits, else ``mean``).
        edges: also score the edge set (path patching; slower).
        out: folder for the outputs (default: write nothing).
        settings: memory budget, rows per pass (default 256), seed, progress bars.
    """
    settings = settings or RunSettings()
    if n_prompts < 1:
        raise ParameterError(f"n_prompts (--n-prompts) must be >= 1, got {n_prompts}")
    check_tau(tau)  # before the model loads, not after the runs are cached
    if out is not None:
        ensure_writable_dir(out)
    start = time.perf_counter()
    with seeded(settings.seed):
        model, name = resolve_model(model, device=device, dtype=dtype, remote=remote)
        _, chosen = default_dictionaries(name, model, set_name, dictionaries,
                                         progress=settings.progress)
        pairs = load_ioi_prompts(prompts, corruption, 10**9, settings.seed)
        if template != "all" and "template" in pairs.columns:
            if template == "largest":
                template = pairs["template"].value_counts().index[0]
            pairs = pairs[pairs["template"] == template].reset_index(drop=True)
            if pairs.empty:
                raise ParameterError(f"no prompts with template {template!r}",
                                     hint="use template 'largest', 'all' or an id in the "
                                     "file's template column")
        pairs = pairs.head(n_prompts)
        sites = {"embed": TokenBasis.from_model(model), **chosen}
        runs = CircuitRuns(model, sites, pairs, targets="logit_diff", settings=settings)
        positional = positional and len(set(runs.lengths.tolist())) == 1
        preamble = f"{len(pairs)} prompt pairs; logit diff clean {runs.metric_value:.3f}"
        ablation = ablation or ("position_mean" if positional else "mean")
        graph = build_circuit(runs, method, tau=tau, ablation=ablation, positional=positional,
                              relative_tau=relative_tau, max_nodes=max_nodes)
        return evaluate_circuit(runs, graph, name="ioi",
                                title="IOI circuit (logit difference IO − S)", method=method,
                                ablation=ablation, edges=edges, preamble=preamble, out=out,
                                start=start)


# -------------------------------------------------------------------------- outputs
def circuit_table(graph: nx.DiGraph, max_rows: int | None = 40) -> pd.DataFrame:
    """Edges of a circuit as a readable table: source and target (with labels), weight;
    largest ``|weight|`` first."""
    edges = edges_frame(graph)
    labels = {node: graph.nodes[node].get("label") or "" for node in graph.nodes}
    table = pd.DataFrame({
        "source": edges["source"],
        "source_label": edges["source"].map(labels),
        "target": edges["target"],
        "target_label": edges["target"].map(labels),
        "weight": edges["weight"],
    })
    return table if max_rows is None else table.head(max_rows)


def save_circuit(graph: nx.DiGraph, out: str | os.PathLike[str], name: str = "circuit", *,
                 curve: pd.DataFrame | None = None, title: str | None = None) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>_nodes.csv``/``_edges.csv``/``_graph.json``,
    ``<name>.png`` (diagram) and, if given, the faithfulness curve as CSV, under ``out``, as
    one set (``featcircuits.writes.atomic_files``: the old files or the new, never a mix)."""
    with atomic_files(out) as files:
        return _circuit_files(files, graph, name, curve=curve, title=title)


def _circuit_files(files: FileSet, graph: nx.DiGraph, name: str, *,
                   curve: pd.DataFrame | None, title: str | None) -> dict[str, Path]:
    """``save_circuit``'s files, written into the set ``files``; returns their final paths."""
    folder = files.folder
    write_json(graph, files.path(f"{name}.json"))
    for table in ("nodes.csv", "edges.csv", "graph.json"):
        files.path(f"{name}_{table}")  # refuses a link/FIFO there before anything is written
    write_tables(graph, f"{files.staging}{os.sep}{name}_")
    draw_circuit(graph, files.path(f"{name}.png"), title=title)
    paths = {"json": folder / f"{name}.json", "nodes": folder / f"{name}_nodes.csv",
             "edges": folder / f"{name}_edges.csv", "png": folder / f"{name}.png"}
    if curve is not None:
        curve.to_csv(files.path(f"{name}_faithfulness.csv"), index=False, float_format="%.6g")
        paths["curve"] = folder / f"{name}_faithfulness.csv"
    return paths


def draw_circuit(graph: nx.DiGraph, path: str | os.PathLike[str], *, title: str | None = None
                 ) -> Path:
    """A diagram of the circuit at ``path`` (``featcircuits.render.render_circuit``), pruned
    by influence with the default shares (``featcircuits.graph.prune``) when it has more
    than ``DRAW_PRUNE_ABOVE`` nodes; the diagram says how much was pruned."""
    from featcircuits.graph import prune
    from featcircuits.render import render_circuit

    if graph.number_of_nodes() > DRAW_PRUNE_ABOVE and graph.number_of_edges():
        graph = prune(graph)
    render_circuit(graph, path=path, title=title)
    return Path(path)
