"""Feature circuits: discovery by exact ablation (ACDC), attribution, or both (hybrid).

Nodes are dictionary features (and each site's error term) at the dictionary sites, either
summed over token positions or one per position (``positional=True``); the targets (a
feature, a logit or a metric, see ``featcircuits.circuits.targets``) are the sinks. An edge
``u → d`` carries the **direct effect** of ``u`` on ``d``::

    weight(u → d) = d(clean) − d(u ablated, every dictionary site between u and d frozen)

averaged over prompts (``featcircuits.circuits.ablation``). Every dictionary is read
(encoded) at its ``input_site`` and written at its ``site`` (they differ for transcoders).
A node's ``effect`` is the change of the summed targets when it alone is ablated (no
freezing): ``m(clean) − m(node ablated)``.

* ``acdc_circuit`` measures every edge by ablation: walking backwards over the sites, every
  candidate upstream node is ablated (many per forward pass, stacked along the batch) and the
  change of every downstream node still in the graph is read; edges with ``|weight| < tau``
  are dropped, then nodes without a path to a target.
* ``attribution_circuit`` estimates node effects by attribution patching or integrated
  gradients, keeps nodes with ``|effect| >= node_tau``, and estimates edges from gradients
  (``featcircuits.circuits.attribution``).
* ``hybrid_circuit`` ranks edges by attribution, verifies the top ones by ablation, and
  records in the graph's attributes how often attribution was wrong.
* ``feature_graph`` is the seed paper's graph between two dictionaries.

All three discovery functions take the same core arguments (``CircuitOptions`` plus the
runs: a ``CircuitRuns``, or model, dictionaries, inputs, targets, ``node_reduce`` and
``settings``) and return a ``networkx.DiGraph``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import torch
from tqdm.auto import tqdm

from featcircuits.circuits.ablation import ablation_effects, exact_node_effects, verify_edges
from featcircuits.circuits.attribution import (
    IG_METHODS,
    attribution_edges,
    keep_nodes,
    node_attributions,
    node_limit,
)
from featcircuits.circuits.build import build_graph
from featcircuits.circuits.nodes import (
    Node,
    candidate_nodes,
    edge_threshold,
    graph_nodes,
    keeps_edge,
    node_id,
    node_order,
    site_depth,
    upstream_sites,
)
from featcircuits.circuits.targets import FeatureTarget, Target
from featcircuits.dictionaries.base import Dictionary
from featcircuits.engine.runs import ABLATIONS, CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import CircuitWarning, ParameterError
from featcircuits.graph import check_tau
from featcircuits.model.sites import Site

__all__ = ["CircuitOptions", "acdc_circuit", "attribution_circuit", "circuit_runs",
           "feature_graph", "hybrid_circuit", "node_attributions"]

COMPARISON_COLUMNS = ("source", "target", "attribution", "exact", "sign_agrees",
                      "threshold_agrees")


@dataclass(frozen=True)
class CircuitOptions:
    """What every discovery method is asked, validated once.

    Attributes:
        tau: keep edges with ``|weight| >= tau`` (and ``weight != 0``).
        ablation: ``zero`` (default), ``mean``, ``position_mean``, ``resample`` or
            ``corrupt`` (prompt pairs).
        positional: one node per (feature, position) instead of per feature.
        candidates: ``{site: feature ids}`` restricting the upstream features considered
            (default: every feature active somewhere on the data).
        errors: include error nodes.
        relative_tau: keep edges with ``|weight| >= tau × scale(d)`` instead, ``scale(d)``
            the downstream node's typical magnitude (``CircuitRuns.node_scale``).
    """

    tau: float
    ablation: str = "zero"
    positional: bool = False
    candidates: Mapping[str, Sequence[int]] | None = None
    errors: bool = True
    relative_tau: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", check_tau(self.tau))
        if self.ablation not in ABLATIONS:
            raise ParameterError(f"unknown ablation {self.ablation!r}",
                                 hint=f"use one of {', '.join(ABLATIONS)}")
        if not isinstance(self.positional, bool):
            raise ParameterError(f"positional must be True or False, got {self.positional!r}")

    def edge_limit(self, runs: CircuitRuns, downstream, tau: float | None = None) -> float:
        """The ``|weight|`` an edge into ``downstream`` needs (``tau`` defaults to
        ``self.tau``)."""
        return edge_threshold(runs, downstream, self.tau if tau is None else tau,
                              self.relative_tau)

    def nodes(self, runs: CircuitRuns, site: str) -> list[Node]:
        """Candidate nodes at ``site`` (``circuits.nodes.candidate_nodes``)."""
        return candidate_nodes(runs, site, ablation=self.ablation, positional=self.positional,
                               candidates=self.candidates, errors=self.errors)

    def graph_attrs(self) -> dict:
        """What the graph records of these options (``graph.graph``)."""
        return {"tau": self.tau, "ablation": self.ablation, "positional": self.positional,
                "relative_tau": bool(self.relative_tau)}


def circuit_runs(model, dictionaries: Mapping[str, Dictionary] | None = None, inputs=None, *,
                 targets: Target | str | Sequence | None = None, node_reduce: str = "mean",
                 settings: RunSettings | None = None) -> CircuitRuns:
    """A ``CircuitRuns`` (passed through when ``model`` already is one)."""
    if isinstance(model, CircuitRuns):
        if dictionaries is not None or inputs is not None or targets is not None:
            raise ParameterError("pass either a CircuitRuns or model, dictionaries, inputs and "
                                 "targets, not both")
        if settings is not None:
            raise ParameterError("settings were fixed when the CircuitRuns was built",
                                 hint="pass settings= to CircuitRuns(...) instead")
        return model
    if dictionaries is None or inputs is None or targets is None:
        raise ParameterError("circuit discovery needs model, dictionaries, inputs and targets",
                             hint="e.g. acdc_circuit(model, {'resid_out.0': sae}, prompts, "
                             "targets='logit_diff', tau=0.1)")
    return CircuitRuns(model, dictionaries, inputs, targets=targets, node_reduce=node_reduce,
                       settings=settings)


# ------------------------------------------------------------------------ discovery
def acdc_circuit(model, dictionaries: Mapping[str, Dictionary] | None = None, inputs=None, *,
                 targets: Target | str | Sequence | None = None, tau: float,
                 ablation: str = "zero", positional: bool = False,
                 candidates: Mapping[str, Sequence[int]] | None = None, errors: bool = True,
                 relative_tau: bool = False, node_reduce: str = "mean",
                 settings: RunSettings | None = None, node_effects: bool = True
                 ) -> nx.DiGraph:
    """Circuit by exact ablation, pruned backwards site by site.

    Args:
        model: nnsight ``LanguageModel`` — or a ``CircuitRuns`` (then omit dictionaries,
            inputs, targets and settings).
        dictionaries: ``{site: Dictionary}``; their sites are the graph's layers.
        inputs: prompt pairs, texts or token ids (``engine.runs.read_inputs``).
        targets: what to explain (``featcircuits.circuits.targets``): ``"logit_diff"``,
            ``FeatureTarget(site, id, positions)``, ``LogitTarget(token)``, or a list.
        tau, ablation, positional, candidates, errors, relative_tau: see
            ``CircuitOptions``.
        node_reduce: a node's value is the ``mean`` or ``sum`` over each prompt's tokens
            (ignored when ``model`` is a ``CircuitRuns``, which fixed it).
        settings: ``RunSettings`` (memory budget, rows per pass, seed, progress).
        node_effects: also measure each kept node's own effect (one more batched pass).

    Returns:
        the circuit (``networkx.DiGraph``; edges' ``method`` is ``"acdc"``).
    """
    options = CircuitOptions(tau, ablation, positional, candidates, errors, relative_tau)
    runs = circuit_runs(model, dictionaries, inputs, targets=targets, node_reduce=node_reduce,
                        settings=settings)
    in_graph: dict[str, list[Node]] = {}
    edges: dict[tuple, float] = {}
    strongest: dict[str, float] = {}  # target id -> largest |weight| of any edge into it
    sites = upstream_sites(runs)
    for site in tqdm(list(reversed(sites)), desc="acdc", leave=False,
                     disable=not runs.progress or len(sites) < 2):
        depth = site_depth(site)
        downstream = {j: in_graph[j] for j in in_graph if site_depth(j) > depth and in_graph[j]}
        live_targets = [t for t in runs.targets if t.is_output or site_depth(t.site) > depth]
        if not downstream and not live_targets:
            continue
        nodes = options.nodes(runs, site)
        if not nodes:
            continue
        effects, columns = ablation_effects(runs, site, nodes, downstream, ablation=ablation,
                                            positional=positional)
        limits = torch.tensor([options.edge_limit(runs, column) for column in columns],
                              device=effects.device)
        kept = (effects.abs() >= limits[None, :]) & (effects != 0)
        for j, column in enumerate(columns):
            if isinstance(column, str) and len(nodes):
                strongest[column] = max(strongest.get(column, 0.0),
                                        float(effects[:, j].abs().max()))
        for i, node in enumerate(nodes):
            hits = torch.nonzero(kept[i]).flatten().tolist()
            if not hits:
                continue
            in_graph.setdefault(site, []).append(node)
            row = effects[i].tolist()
            for column in hits:
                edges[(node, columns[column])] = row[column]
    nodes = [node for group in in_graph.values() for node in group]
    graph = build_graph(runs, nodes, edges, method="acdc", **options.graph_attrs())
    if node_effects:
        _set_exact_effects(runs, graph, options)
    warn_if_cut_off(graph, runs, options, strongest)
    return graph


def attribution_circuit(model, dictionaries: Mapping[str, Dictionary] | None = None,
                        inputs=None, *, targets: Target | str | Sequence | None = None,
                        tau: float, ablation: str = "zero", positional: bool = False,
                        candidates: Mapping[str, Sequence[int]] | None = None,
                        errors: bool = True, relative_tau: bool = False,
                        node_reduce: str = "mean", settings: RunSettings | None = None,
                        node_tau: float | None = None, max_nodes: int | None = None,
                        method: str = "attribution", steps: int = 10) -> nx.DiGraph:
    """Circuit by attribution patching (gradients), after Marks et al. (2024).

    Node effects ``(c − s) · ∂m/∂c`` (``method="attribution"``) or integrated gradients
    (``method="ig"``, ``steps`` points); nodes with ``|effect| >= node_tau`` (default
    ``tau``; with ``relative_tau`` a fraction of the targets' magnitude) are kept, at most
    ``max_nodes`` per site (the largest); edges between kept nodes are estimated from
    gradients of each downstream node (one backward pass per chunk of downstream nodes) and
    kept when ``|weight| >= tau``. Edges use the same method as nodes: the gradient at the
    clean run (``attribution``), or integrated gradients with each upstream site
    interpolated between clean and ablated (``ig``: ``steps`` times the cost, but it follows
    a saturating nonlinearity that the clean gradient misses; docs/circuits.md). The other
    arguments are those of ``acdc_circuit``.
    """
    options = CircuitOptions(tau, ablation, positional, candidates, errors, relative_tau)
    node_tau = options.tau if node_tau is None else check_tau(node_tau, "node_tau")
    _check_attribution(method)
    runs = circuit_runs(model, dictionaries, inputs, targets=targets, node_reduce=node_reduce,
                        settings=settings)
    effects, kept = _attributed_nodes(runs, options, node_tau=node_tau, max_nodes=max_nodes,
                                      method=method, steps=steps)
    edges, measured = attribution_edges(runs, kept, options.tau, ablation=ablation,
                                        positional=positional, relative_tau=relative_tau,
                                        method=method, steps=steps)
    nodes = [node for group in kept.values() for node in group]
    graph = build_graph(runs, nodes, edges, method="attribution", effects=effects,
                        node_threshold=node_tau, attribution=method, **options.graph_attrs(),
                        **({} if max_nodes is None else {"max_nodes": int(max_nodes)}))
    warn_if_cut_off(graph, runs, options, _into_targets(measured),
                    node_tau=node_tau, effects=effects)
    return graph


def hybrid_circuit(model, dictionaries: Mapping[str, Dictionary] | None = None, inputs=None, *,
                   targets: Target | str | Sequence | None = None, tau: float,
                   ablation: str = "zero", positional: bool = False,
                   candidates: Mapping[str, Sequence[int]] | None = None, errors: bool = True,
                   relative_tau: bool = False, node_reduce: str = "mean",
                   settings: RunSettings | None = None, node_tau: float | None = None,
                   max_nodes: int | None = None, method: str = "attribution",
                   steps: int = 10, screen: float = 0.25, max_verify: int | None = None,
                   exact_node_effects: bool = False) -> nx.DiGraph:
    """Rank edges by attribution, verify the top ones by exact ablation.

    Nodes with attributed ``|effect| >= node_tau`` (default ``tau / 10``: a node missed here
    loses all its edges, so nodes are screened more loosely than edges) are kept (at
    most ``max_nodes`` per site, the largest); edges among them with attributed
    ``|weight| >= screen * tau`` are candidates (nodes and edges attributed by ``method``:
    ``"ig"`` screens with integrated gradients, which keeps saturated edges that the clean
    gradient would throw out); the ``max_verify`` largest (default: all)
    are measured exactly as in ``acdc_circuit`` (ablating each distinct upstream node once,
    batched) and kept when the exact ``|weight| >= tau``. Node ``effect``s are the
    attributed ones unless ``exact_node_effects`` (one more batched ablation pass). The other
    arguments are those of ``attribution_circuit``.

    Returns:
        the verified circuit (edges' ``method`` is ``"hybrid"``). Its graph attributes
        record how attribution fared: ``verified_edges``, ``attribution_wrong_sign`` and
        ``attribution_wrong_threshold`` (counts over verified edges: attribution's sign
        differs from the exact one / attribution and exact fall on different sides of
        ``tau``), and ``comparison``: one dict per verified edge with ``source, target,
        attribution, exact, sign_agrees, threshold_agrees`` (``pandas.DataFrame(
        graph.graph["comparison"])`` makes it a table).
    """
    options = CircuitOptions(tau, ablation, positional, candidates, errors, relative_tau)
    if not 0 < screen <= 1:
        raise ParameterError(f"screen must be in (0, 1], got {screen!r}",
                             hint="attribution candidates need |weight| >= screen * tau")
    if max_verify is not None and (isinstance(max_verify, bool)
                                   or not isinstance(max_verify, int) or max_verify < 0):
        raise ParameterError(f"max_verify must be a non-negative int, got {max_verify!r}")
    node_tau = options.tau / 10 if node_tau is None else check_tau(node_tau, "node_tau")
    _check_attribution(method)
    runs = circuit_runs(model, dictionaries, inputs, targets=targets, node_reduce=node_reduce,
                        settings=settings)
    effects, kept = _attributed_nodes(runs, options, node_tau=node_tau, max_nodes=max_nodes,
                                      method=method, steps=steps)
    screened, estimated = attribution_edges(runs, kept, screen * options.tau,
                                            ablation=ablation, positional=positional,
                                            relative_tau=relative_tau, method=method,
                                            steps=steps)
    ranked = sorted(screened.items(), key=lambda item: -abs(item[1]))
    if max_verify is not None:
        ranked = ranked[:max_verify]
    exact = verify_edges(runs, [edge for edge, _ in ranked], ablation=ablation,
                         positional=positional)
    rows, edges = [], {}
    for (u, d), estimate in ranked:
        value = exact[(u, d)]
        limit = options.edge_limit(runs, d)
        rows.append({"source": node_id(u), "target": d if isinstance(d, str) else node_id(d),
                     "attribution": float(estimate), "exact": float(value),
                     "sign_agrees": bool((estimate > 0) == (value > 0)),
                     "threshold_agrees": keeps_edge(estimate, limit) == keeps_edge(value, limit)})
        if keeps_edge(value, limit):
            edges[(u, d)] = value
    wrong_sign = sum(not row["sign_agrees"] for row in rows)
    wrong_threshold = sum(not row["threshold_agrees"] for row in rows)
    nodes = sorted({u for u, _ in edges} | {d for _, d in edges if not isinstance(d, str)},
                   key=node_order)
    graph = build_graph(runs, nodes, edges, method="hybrid", effects=effects,
                        node_threshold=node_tau, attribution=method, verified_edges=len(rows),
                        attribution_wrong_sign=wrong_sign,
                        attribution_wrong_threshold=wrong_threshold, comparison=rows,
                        **options.graph_attrs())
    if exact_node_effects:
        _set_exact_effects(runs, graph, options)
    # exact weights where verified, else attribution's estimate
    warn_if_cut_off(graph, runs, options, _into_targets({**estimated, **exact}),
                    node_tau=node_tau, effects=effects)
    return graph


def feature_graph(model, dictionaries: Mapping[str, Dictionary], inputs, *,
                  upstream: str, downstream: str, downstream_features: Sequence[int] | None = None,
                  tau: float = 0.0, ablation: str = "zero", errors: bool = False,
                  settings: RunSettings | None = None) -> nx.DiGraph:
    """The seed paper's feature graph between two dictionaries (Cunningham et al. 2023).

    Ablate each active feature at ``upstream`` (``x −= c_i f_i`` for ``zero``), re-encode
    the ``downstream`` dictionary, and take the change of each downstream feature (summed
    over the real tokens, averaged over prompts) as the edge weight. This is
    ``acdc_circuit`` with the downstream features as targets and the two sites only.

    Args:
        downstream_features: downstream features to read (default: every feature active
            somewhere on the data).
    """
    up, down = str(Site.parse(upstream)), str(Site.parse(downstream))
    if site_depth(up) >= site_depth(down):
        raise ParameterError(f"upstream site {up} is not before downstream site {down}",
                             hint="pass the earlier site as upstream")
    for site in (up, down):
        if site not in {str(Site.parse(s)) for s in dictionaries}:
            raise ParameterError(f"no dictionary for site {site}",
                                 hint=f"dictionaries have sites {list(dictionaries)}")
    pair = {str(Site.parse(s)): d for s, d in dictionaries.items()
            if str(Site.parse(s)) in (up, down)}
    if downstream_features is None:
        probe = CircuitRuns(model, pair, inputs, targets=[FeatureTarget(down, 0)],
                            settings=settings)
        # nonzero at a real token: what zero ablation changes (encoded block by block)
        downstream_features = probe.active_features(down, "zero")
    if not downstream_features:
        raise ParameterError(f"no feature of the dictionary at {down} is active on the data")
    targets = [FeatureTarget(down, int(f)) for f in downstream_features]
    return acdc_circuit(model, pair, inputs, targets=targets, tau=tau, ablation=ablation,
                        errors=errors, node_effects=False, settings=settings)


# -------------------------------------------------------------------------- shared
def _into_targets(weights: Mapping[tuple, float]) -> dict[str, float]:
    """Largest ``|weight|`` of the measured edges into each target (targets are str ids)."""
    out: dict[str, float] = {}
    for (_, downstream), weight in weights.items():
        if isinstance(downstream, str):
            out[downstream] = max(out.get(downstream, 0.0), abs(float(weight)))
    return out


def warn_if_cut_off(graph: nx.DiGraph, runs: CircuitRuns, options: CircuitOptions,
                    strongest: Mapping[str, float], *, node_tau: float | None = None,
                    effects: Mapping[Node, float] | None = None) -> None:
    """``CircuitWarning`` when no target of ``graph`` has an incoming edge (an empty
    circuit: discovery keeps only nodes with a path to a target), naming the threshold and the largest value that keeps the strongest measured
    edge into the target (the last link of its strongest path)."""
    cut = [t.node_id for t in runs.targets if graph.in_degree(t.node_id) == 0]
    if len(cut) < len(runs.targets):  # some target is explained (feature_graph: many targets)
        return
    what = "empty"
    if node_tau is not None and effects is not None and graph.number_of_nodes() <= len(
            runs.targets):
        unit = node_limit(runs, 1.0, options.relative_tau)
        best = max((abs(v) for v in effects.values()), default=0.0) / (unit or 1.0)
        if best < node_tau:
            warnings.warn(f"the circuit is {what}: node_tau={node_tau:g} removed every node "
                          f"(the strongest has |effect| {best:.4g} in these units); "
                          f"node_tau <= {best:.4g} keeps it", CircuitWarning, stacklevel=3)
            return
    bests = {t: strongest.get(t, 0.0) / (options.edge_limit(runs, t, 1.0) or 1.0) for t in cut}
    target = max(cut, key=lambda t: (bests[t], t))
    which = (f"target {target!r}" if len(cut) == 1
             else f"{len(cut)} of {len(runs.targets)} targets (e.g. {target!r})")
    hint = (f"tau <= {bests[target]:.4g} keeps the strongest measured edge into "
            f"{target!r}" if bests[target] > 0 else "no measured edge into it is non-zero")
    warnings.warn(f"the circuit is {what}: tau={options.tau:g}"
                  f"{' (relative)' if options.relative_tau else ''} removed every edge into "
                  f"{which}; {hint}", CircuitWarning, stacklevel=3)


def _check_attribution(method: str) -> None:
    if method not in IG_METHODS:
        raise ParameterError(f"unknown attribution method {method!r}",
                             hint=f"use one of {IG_METHODS}")


def _attributed_nodes(runs: CircuitRuns, options: CircuitOptions, *, node_tau: float,
                      max_nodes: int | None, method: str, steps: int
                      ) -> tuple[dict[Node, float], dict[str, list[Node]]]:
    """The step attribution and hybrid discovery share: attribute every candidate node and
    keep those above the node threshold.

    Returns ``(effects, kept)``: ``effects`` maps each candidate to its attributed effect,
    ``kept`` maps each site to its kept nodes.
    """
    effects = node_attributions(runs, ablation=options.ablation, positional=options.positional,
                                method=method, steps=steps, candidates=options.candidates,
                                errors=options.errors)
    kept = keep_nodes(effects, node_limit(runs, node_tau, options.relative_tau), max_nodes)
    return effects, kept


def _set_exact_effects(runs: CircuitRuns, graph: nx.DiGraph, options: CircuitOptions) -> None:
    """Replace the nodes' ``effect`` by their exact ablation effect."""
    nodes = graph_nodes(graph)
    for node, value in exact_node_effects(runs, nodes, ablation=options.ablation,
                                          positional=options.positional).items():
        graph.nodes[node_id(node)]["effect"] = value
