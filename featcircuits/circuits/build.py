"""Circuit graphs (schema version 1, ``docs/graph-format.md``) from internal nodes and edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
import torch

from featcircuits.circuits.nodes import Node, node_id
from featcircuits.dictionaries.base import Dictionary
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
            own = ((runs.features[target.site][..., target.feature]
                    - source_features[target.site][..., target.feature])
                   * target.weights).sum(1).mean()
            graph.add_node(target.node_id, kind="feature", site=target.site,
                           layer=runs.site_layer(target.site), feature=int(target.feature),
                           position=None, activation=value, effect=float(own),
                           label=f"target {target.label}",
                           scale=runs.node_scale(target.node_id))
    for node in nodes:
        site, f, position = node
        ident = node_id(node)
        if ident in graph:
            continue
        weights = tm if position is None else torch.zeros_like(tm).index_fill_(1, torch.tensor(
            [position], device=tm.device), 1.0) * tm
        denominator = float(weights.sum()) or 1.0
        if f == ERROR:
            activation = float((runs.errors[site].float().norm(dim=-1) * weights).sum()
                               / denominator)
            kind, feature, label = "error", None, ""
        else:
            activation = float((runs.features[site][..., f] * weights).sum() / denominator)
            kind = "input" if Site.parse(site).kind == "embed" else "feature"
            feature = int(f)
            label = _feature_label(runs.dictionaries[site], site, int(f))
        effect = None if effects is None or node not in effects else float(effects[node])
        graph.add_node(ident, kind=kind, site=site, layer=runs.site_layer(site),
                       feature=feature, position=None if position is None else int(position),
                       activation=activation, effect=effect, label=label,
                       scale=runs.node_scale(node))
    for (upstream, downstream), weight in edges.items():
        source = node_id(upstream)
        target = downstream if isinstance(downstream, str) else node_id(downstream)
        graph.add_edge(source, target, weight=float(weight), method=method)
    return reaching(graph)
