"""Circuit graphs (schema version 1, ``docs/graph-format.md``) from internal nodes and edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
import torch

from featcircuits.circuits.nodes import Node, node_id
from featcircuits.dictionaries.base import Dictionary
from featcircuits.engine.cache import select_features
from featcircuits.engine.runs import ERROR, CircuitRuns
from featcircuits.graph import FORMAT_VERSION, reaching
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import Site

__all__ = ["build_graph"]


def _model_name(runs: CircuitRuns) -> str:
    try:
        config = underlying_module(runs.model).config
        return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", ""))
    except Exception:  # noqa: BLE001 - a name is cosmetic
        return ""

def _feature_label(dictionary: Dictionary, site: str, feature: int) -> str:
    return str(dictionary.feature_label(feature))

def _feature_activations(runs: CircuitRuns, nodes: Sequence[Node]) -> dict[Node, float]:
    """Each feature node's mean clean activation over the real tokens (at its position
    when positional): one read per site of the nodes' features, in blocks of
    ``feature_chunk`` features."""
    tm = runs.token_mask
    counts = tm.sum(0)                                                       # [T]
    by_site: dict[str, list[int]] = {}
    for site, f, _ in nodes:
        if f != ERROR and f not in by_site.setdefault(site, []):
            by_site[site].append(f)
    out: dict[Node, float] = {}
    for site, ids in by_site.items():
        sums = torch.zeros(runs.width, len(ids), device=runs.device)          # [T, k]
        step = runs.feature_chunk(runs.n, temporaries=2)
        for first in range(0, len(ids), step):
            block = torch.tensor(ids[first:first + step], device=runs.device)
            values = select_features(runs.features, site, feature_ids=block).float()  # [n, T, k]
            sums[:, first:first + step] = (values * tm[..., None]).sum(0)
        column = {f: k for k, f in enumerate(ids)}
        for node in nodes:
            if node[0] == site and node[1] != ERROR:
                k, position = column[node[1]], node[2]
                out[node] = (float(sums[:, k].sum() / (float(counts.sum()) or 1.0))
                             if position is None
                             else float(sums[position, k] / (float(counts[position]) or 1.0)))
    return out

def build_graph(runs: CircuitRuns, nodes: Sequence[Node], edges: Mapping[tuple, float], *,
                method: str, tau: float, ablation: str, positional: bool,
                effects: Mapping[Node, float] | None = None, **graph_attrs) -> nx.DiGraph:
    """A circuit graph (schema version 1) from internal nodes and edges, pruned to the
    nodes with a path to a target."""
    tm = runs.token_mask
    graph = nx.DiGraph(
        format_version=FORMAT_VERSION,
        target=" + ".join(t.label for t in runs.targets),
        target_nodes=[t.node_id for t in runs.targets],
        metric=" + ".join(t.spec for t in runs.targets),
        tau=float(tau), model=_model_name(runs), method=method, ablation=ablation,
        positional=bool(positional), n_prompts=int(runs.n), node_reduce=runs.node_reduce,
        **graph_attrs,
    )
    if positional:
        tokenizer = getattr(runs.model.tokenizer, "tokenizer", runs.model.tokenizer)
        length = int(runs.lengths[0])
        graph.graph["prompt_tokens"] = [str(t) for t in tokenizer.convert_ids_to_tokens(
            runs.ids[0, :length].tolist())]
    source_features, _ = runs.sources(ablation)
    for target in runs.targets:
        value = float(runs.target_values[:, runs.targets.index(target)].mean())
        if target.is_output:
            graph.add_node(target.node_id, kind="output", site=None, layer=runs.n_layers,
                           feature=None, position=None, activation=value, effect=None,
                           label=target.label, scale=runs.node_scale(target.node_id))
        else:
            ids = torch.tensor([target.feature], device=runs.device)
            own = ((select_features(runs.features, target.site, feature_ids=ids)[..., 0]
                    - select_features(source_features, target.site, feature_ids=ids)[..., 0])
                   * target.weights).sum(1).mean()
            graph.add_node(target.node_id, kind="feature", site=target.site,
                           layer=runs.site_layer(target.site), feature=int(target.feature),
                           position=None, activation=value, effect=float(own),
                           label=f"target {target.label}",
                           scale=runs.node_scale(target.node_id))
    nodes = [node for node in nodes if node_id(node) not in graph]
    activations = _feature_activations(runs, nodes)
    runs.prepare_node_scales(nodes)   # the graph's features only, not every feature
    for node in nodes:
        site, f, position = node
        ident = node_id(node)
        if ident in graph:
            continue
        if f == ERROR:
            weights = tm if position is None else torch.zeros_like(tm).index_fill_(
                1, torch.tensor([position], device=tm.device), 1.0) * tm
            activation = float((runs.errors[site].float().norm(dim=-1) * weights).sum()
                               / (float(weights.sum()) or 1.0))
            kind, feature, label = "error", None, ""
        else:
            activation = activations[node]
            kind = "input" if Site.parse(site).kind == "embed" else "feature"
            feature = int(f)
            label = _feature_label(runs.dictionaries[site], site, int(f))
        effect = None if effects is None or node not in effects else float(effects[node])
        graph.add_node(ident, kind=kind, site=site, layer=runs.site_layer(site),
                       feature=feature, position=None if position is None else int(position),
                       activation=activation, effect=effect, label=label,
                       scale=runs.node_scale(node))
    ids: dict[Node, str] = {}   # one id per node (a graph can have ~10⁶ edges)

    def ident_of(node) -> str:
        if isinstance(node, str):
            return node
        if node not in ids:
            ids[node] = node_id(node)
        return ids[node]

    graph.add_edges_from((ident_of(upstream), ident_of(downstream),
                          {"weight": float(weight), "method": method})
                         for (upstream, downstream), weight in edges.items())
    return reaching(graph, copy=False)   # the graph is ours: no second copy of its edges
