"""Feature labels for circuit graphs, from data or from a file of explanations.

:func:`label_features` fills the ``label`` of every feature node from the dashboard
computations (``featcircuits.dashboards.data``: top contexts and the direct logit effect,
without the ablation pass): the tokens the feature fires on most, then the output tokens its
decoder direction promotes and suppresses most, e.g. ``"Mary, John → ↑Mary ↓the"``. It also
stores ``top_contexts`` (the top contexts, the maximum token in ``⟦…⟧``), ``logit_up`` and
``logit_down`` (three tokens each) on the node, which the HTML hover card shows.

:func:`import_labels` sets labels from a JSON list of explanations, the shape Neuronpedia
exports: ``[{"modelId": ..., "layer": ..., "index": 117, "description": "..."}, ...]``
(``site`` may replace ``layer``; ``feature`` may replace ``index``; ``explanation`` or
``label`` may replace ``description``). ``layer`` is a featcircuits site name
(``"resid_out.3"``), or a Neuronpedia layer id translated by ``layers={"3-res-jb":
"resid_out.3"}``. Every node of that (site, feature) gets the label, at every position.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import networkx as nx
from tqdm.auto import tqdm

from featcircuits.dashboards.data import (
    DashboardContext,
    FeatureDashboard,
    SiteRun,
    collect_site,
    default_texts,
    feature_dashboard_data,
)
from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import GraphError, ParameterError
from featcircuits.files import parse_json, read_bytes_limited
from featcircuits.model.sites import Site

__all__ = ["context_text", "dashboard_label", "graph_dashboard_data", "import_labels",
           "label_features"]

#: explanations files larger than this are refused (``max_bytes`` raises it)
MAX_LABEL_BYTES = 64 * 2**20


def _clean(token: str) -> str:
    text = token.strip()
    return text if text else repr(token)


def dashboard_label(data: FeatureDashboard, n_tokens: int = 2) -> str:
    """``"<top tokens> → ↑<promoted> ↓<suppressed>"`` from a dashboard's data: the distinct
    tokens at the maxima of the top contexts (at most ``n_tokens``), the output token with
    the largest and the one with the most negative direct logit effect."""
    tokens: list[str] = []
    for context in data.top_contexts:
        token = _clean(context.tokens[context.max_position])
        if context.max_activation > 0 and token not in tokens:
            tokens.append(token)
        if len(tokens) == n_tokens:
            break
    parts = [", ".join(tokens) or "(never fires)"]
    effects = []
    if data.logit_up and data.logit_up[0][1] > 0:
        effects.append(f"↑{_clean(data.logit_up[0][0])}")
    if data.logit_down and data.logit_down[0][1] < 0:
        effects.append(f"↓{_clean(data.logit_down[0][0])}")
    if effects:
        parts.append(" ".join(effects))
    return " → ".join(parts)


def context_text(context: DashboardContext, before: int = 6, after: int = 2) -> str:
    """One top context as text: ``before`` tokens, the maximum in ``⟦…⟧``, ``after`` tokens."""
    start = max(0, context.max_position - before)
    stop = min(len(context.tokens), context.max_position + after + 1)
    pieces = [f"⟦{t}⟧" if i == context.max_position else t
              for i, t in zip(range(start, stop), context.tokens[start:stop])]
    text = "".join(pieces).replace("\n", "⏎")
    return ("…" if start > 0 else "") + text + ("…" if stop < len(context.tokens) else "")


def graph_dashboard_data(model, dictionaries: Mapping[str, Dictionary], graph: nx.DiGraph, *,
                         texts: Sequence[str] | None = None, progress: bool = True,
                         **kwargs) -> Iterator[tuple[list[str], FeatureDashboard]]:
    """``(node ids, dashboard data)`` for each (site, feature) of the graph's feature nodes
    whose site has a dictionary; each site's activations are read once. ``kwargs`` go to
    ``feature_dashboard_data`` (``top_k``, ``n_ctx``, ``batch_size``, ``ablate``, ...)."""
    from featcircuits.graph.schema import validate_circuit_graph

    validate_circuit_graph(graph)
    wanted: dict[tuple[str, int], list[str]] = {}
    for node, attrs in graph.nodes(data=True):
        if attrs.get("kind") == "feature" and attrs.get("feature") is not None:
            site = attrs.get("site")
            if site in dictionaries:
                wanted.setdefault((site, int(attrs["feature"])), []).append(node)
    texts = default_texts() if texts is None else list(texts)
    n_ctx, batch_size = kwargs.get("n_ctx", 64), kwargs.get("batch_size", 32)
    runs: dict[str, SiteRun] = {}
    for site, feature in tqdm(sorted(wanted), desc="dashboards", disable=not progress):
        if site not in runs:
            runs[site] = collect_site(model, Site.parse(site), texts, n_ctx=n_ctx,
                                      batch_size=batch_size, progress=progress)
        data = feature_dashboard_data(model, dictionaries[site], site, feature, texts=texts,
                                      progress=progress, site_run=runs[site], **kwargs)
        yield wanted[(site, feature)], data


def label_features(graph: nx.DiGraph, model, dictionaries: Mapping[str, Dictionary], *,
                   texts: Sequence[str] | None = None, n_tokens: int = 2,
                   n_contexts: int = 3, n_ctx: int = 64, batch_size: int = 32,
                   progress: bool = True) -> nx.DiGraph:
    """A copy of ``graph`` whose feature nodes (at sites with a dictionary) carry labels
    from data: ``label`` (:func:`dashboard_label`), ``top_contexts`` (``n_contexts``
    strings, :func:`context_text`), ``logit_up`` / ``logit_down`` (three tokens each).

    ``texts`` default to ``default_texts()`` (200 seeded corpus documents); the cost is one
    pass over them per site (no ablation pass).
    """
    if n_tokens < 1 or n_contexts < 1:
        raise ParameterError(f"n_tokens and n_contexts must be >= 1, got {n_tokens}, "
                             f"{n_contexts}")
    labelled = graph.copy()
    for nodes, data in graph_dashboard_data(model, dictionaries, graph, texts=texts,
                                            progress=progress, top_k=max(n_contexts, n_tokens),
                                            n_ctx=n_ctx, batch_size=batch_size, ablate=False):
        values = {
            "label": dashboard_label(data, n_tokens),
            "top_contexts": [context_text(c) for c in data.top_contexts[:n_contexts]],
            "logit_up": [token for token, _ in data.logit_up[:3]],
            "logit_down": [token for token, _ in data.logit_down[:3]],
        }
        for node in nodes:
            labelled.nodes[node].update(values)
    return labelled


def _explanations(source, max_bytes: int) -> list:
    if isinstance(source, (str, os.PathLike)):
        data = parse_json(read_bytes_limited(source, max_bytes, "explanations file",
                                             error=GraphError),
                          f"explanations file {str(source)!r}", error=GraphError)
    else:
        data = source
    if isinstance(data, dict):  # {"explanations": [...]} exports
        data = data.get("explanations", data.get("features"))
    if not isinstance(data, list):
        raise GraphError("explanations must be a JSON list of objects with index, "
                         "description and layer (or site)",
                         hint='e.g. [{"layer": "resid_out.3", "index": 117, '
                         '"description": "names"}]')
    return data


def import_labels(graph: nx.DiGraph, explanations, *, layers: Mapping[str, str] | None = None,
                  max_bytes: int = MAX_LABEL_BYTES) -> nx.DiGraph:
    """A copy of ``graph`` with labels from a list of explanations (a JSON file's path or
    the list itself; see the module docstring). Entries for features not in the graph are
    ignored; an entry without an index, a description or a layer/site raises
    ``GraphError`` naming it. Returns the copy; ``copy.graph["imported_labels"]`` counts
    the nodes labelled."""
    entries = _explanations(explanations, max_bytes)
    by_feature: dict[tuple[str, int], str] = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise GraphError(f"explanation {number} is {entry!r}, not an object")
        index = entry.get("index", entry.get("feature"))
        text = entry.get("description", entry.get("explanation", entry.get("label")))
        layer = entry.get("site", entry.get("layer"))
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(text, str) \
                or layer is None:
            raise GraphError(f"explanation {number} ({entry!r}) needs an int index, a "
                             "description and a layer or site",
                             hint='e.g. {"layer": "resid_out.3", "index": 117, '
                             '"description": "names"}')
        site = str(layers.get(str(layer), layer) if layers else layer)
        by_feature.setdefault((site, index), " ".join(text.split()))
    labelled = graph.copy()
    count = 0
    for node, attrs in labelled.nodes(data=True):
        key = (attrs.get("site"), attrs.get("feature"))
        if attrs.get("kind") == "feature" and key in by_feature:
            attrs["label"] = by_feature[key]
            count += 1
    labelled.graph["imported_labels"] = count
    return labelled
