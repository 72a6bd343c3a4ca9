"""Export circuits as attribution-graph JSON for the circuit-tracer / Neuronpedia frontend.

The file layout follows circuit-tracer's graph files (``metadata``, ``qParams``,
``nodes``, ``links``, plus a ``graph-metadata.json`` index beside them, which its local
server lists). How featcircuits nodes map onto that format:

=================  =========================  ==============================  ==========
featcircuits kind  ``feature_type``            ``node_id``                     ``layer``
=================  =========================  ==============================  ==========
feature            ``cross layer transcoder``  ``{layer}_{feature}_{ctx}``      see below
error              ``mlp reconstruction        ``{layer}_-1_{ctx}``             see below
                   error``
input              ``embedding``               ``E_{feature or ctx}_{ctx}``     ``"E"``
output             ``logit``                   ``{L}_{feature or i}_{ctx}``     L (below)
=================  =========================  ==============================  ==========

- ``layer`` is the model layer when every layer of the graph holds one site only; when a
  layer holds several sites (``attn_out.3``, ``mlp_out.3``, ...), each (layer, site) row
  gets its own consecutive number instead. ``metadata.featcircuits.layers`` always maps
  the numbers back to sites.
- logits sit at layer ``L`` = the output node's ``layer`` + 1 (``n_layers + 1``, as in
  circuit-tracer), or the number of rows + 1 when rows are numbered.
- ``ctx_idx`` is the node's position; position-free nodes sit at the last prompt token.
  A circuit without any position and without a prompt (or with a one-token prompt) gets
  ``prompt_tokens = ["[all positions]", "[metric]"]``: its nodes sit at 0, its outputs at 1
  (circuit-tracer's frontend drops every node of a one-token prompt).
- output nodes' ``clerp`` is ``Output "<label>" (p=<probability>) [<id>]``, the form
  circuit-tracer's frontend parses; ``p`` and ``token_prob`` are the node's
  ``probability`` attribute, 0 without one (featcircuits' targets are usually metrics).
- ``feature`` of a feature node is the Cantor pairing of (layer, feature index), which
  keeps it unique across layers as circuit-tracer does; the raw index is in ``node_id``.
- ``influence`` follows circuit-tracer's cumulative convention: nodes sorted by
  ``|effect|`` (largest first) get the running share of ``Σ|effect|`` (smaller = more
  important); the signed effect itself is kept in the extra field ``effect``.
- ``clerp`` is the node's annotation followed by its featcircuits id in brackets.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from featcircuits.errors import GraphError, OutputError, ParameterError
from featcircuits.files import GRAPH_FILE_LIMIT, parse_json, read_bytes_limited
from featcircuits.graph.schema import validate_circuit_graph
from featcircuits.render.labels import annotation, row_key, short_id
from featcircuits.render.layout import natural_key
from featcircuits.writes import atomic_files, atomic_write_text, committed_path

FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "input": "embedding",
    "output": "logit",
}
INDEX_FILENAME = "graph-metadata.json"
#: ``prompt_tokens`` of a position-free circuit exported without a prompt
POSITION_FREE_TOKENS = ("[all positions]", "[metric]")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _process_token(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _layer_numbers(graph: nx.DiGraph) -> tuple[dict[tuple, int], bool]:
    """Neuronpedia layer number of each feature/error row; True when they are model layers."""
    rows = sorted(
        {row_key(a) for _, a in graph.nodes(data=True) if a["kind"] in ("feature", "error")}
    )
    layers = [key[1] for key in rows]
    if len(set(layers)) == len(layers) and all(layer >= 0 for layer in layers):
        return {key: key[1] for key in rows}, True
    return {key: i for i, key in enumerate(rows)}, False


def _influence(graph: nx.DiGraph) -> dict[str, float]:
    scored = sorted(
        (
            (abs(a["effect"]), node)
            for node, a in graph.nodes(data=True)
            if a.get("effect") is not None
        ),
        key=lambda item: (-item[0], natural_key(item[1])),
    )
    total = sum(score for score, _ in scored)
    if total <= 0:
        return {}
    running, shares = 0.0, {}
    for score, node in scored:
        running += score
        shares[node] = min(running / total, 1.0)
    return shares


def to_neuronpedia_json(
    graph: nx.DiGraph,
    *,
    slug: str,
    prompt: str | None = None,
    scan: str | None = None,
    node_threshold: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Convert a circuit graph to a circuit-tracer / Neuronpedia attribution-graph dict.

    Args:
        graph: circuit ``networkx.DiGraph`` (schema in docs/graph-format.md).
        slug: the graph's short name (lowercase letters, digits, ``-``, ``_``).
        prompt: the prompt text; default: the concatenated ``prompt_tokens``.
        scan: model/dictionary-set id; default ``graph.graph['model']``.
        node_threshold: recorded in ``metadata.node_threshold`` (circuit-tracer's
            cumulative-influence pruning threshold), if the circuit was pruned that way.
        labels: node -> annotation overriding the ``label`` attributes in ``clerp``.
    """
    validate_circuit_graph(graph)
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise ParameterError(
            f"slug {slug!r} is not a valid graph slug",
            hint="use 1-100 lowercase letters, digits, '-' or '_', starting with a letter or digit",
        )
    scan = scan if scan is not None else graph.graph.get("model")
    if not scan:
        raise ParameterError(
            "no scan given and the graph has no 'model' attribute",
            hint="pass scan='<model id>' (Neuronpedia uses it as the model id)",
        )

    positions = [a["position"] for _, a in graph.nodes(data=True) if a.get("position") is not None]
    tokens = [_process_token(t) for t in graph.graph.get("prompt_tokens") or []]
    # circuit-tracer's formatData drops every node whose feature occurs at more than 2/3 of
    # the prompt's tokens, so a one-token prompt loses them all: a position-free circuit
    # without a prompt gets two placeholder positions (everything at 0, the metric at 1)
    placeholders = not positions and len(tokens) < 2
    if placeholders:
        tokens = list(POSITION_FREE_TOKENS)
    elif not tokens:
        tokens = [f"[{i}]" for i in range(max(positions, default=0) + 1)]
    elif positions and max(positions) >= len(tokens):
        raise GraphError(
            f"a node sits at position {max(positions)} but prompt_tokens has only {len(tokens)} tokens",
            hint="store the full prompt in graph.graph['prompt_tokens']",
        )
    last = len(tokens) - 1
    layer_of_row, model_layers = _layer_numbers(graph)
    top = max(layer_of_row.values(), default=-1)
    # circuit-tracer puts logits at n_layers + 1; the output node's layer is n_layers
    output_layers = [a["layer"] for _, a in graph.nodes(data=True) if a["kind"] == "output"]
    base = max(output_layers) if model_layers and output_layers else top + 1
    logit_layer = str(max(base, top + 1) + 1)
    influence = _influence(graph)

    output_nodes = sorted(
        (n for n, a in graph.nodes(data=True) if a["kind"] == "output"), key=natural_key
    )
    ids: dict[str, str] = {}
    nodes: list[dict[str, Any]] = []
    for node in sorted(graph.nodes, key=lambda n: (row_key(graph.nodes[n]), natural_key(n))):
        attrs = graph.nodes[node]
        kind = attrs["kind"]
        if placeholders:
            ctx = last if kind == "output" else 0
        else:
            ctx = attrs["position"] if attrs.get("position") is not None else last
        feature = attrs.get("feature")
        if kind == "feature":
            layer = layer_of_row[row_key(attrs)]
            if feature is None:
                raise GraphError(
                    f"feature node {node!r} has feature=None",
                    hint="set the dictionary index in graph.nodes[node]['feature']",
                )
            node_id, js_id, np_feature, np_layer = (
                f"{layer}_{feature}_{ctx}",
                f"{layer}_{feature}-0",
                _cantor(layer, feature),
                str(layer),
            )
        elif kind == "error":
            layer = layer_of_row[row_key(attrs)]
            node_id, js_id, np_feature, np_layer = (
                f"{layer}_-1_{ctx}",
                f"{layer}_-1-{ctx}",
                -1,
                str(layer),
            )
        elif kind == "input":
            vocab = feature if feature is not None else ctx
            # circuit-tracer numbers an embedding by its position; position-free inputs share
            # one, so they are told apart by their vocabulary index
            np_feature = ctx if attrs.get("position") is not None else vocab
            node_id, js_id, np_layer = f"E_{vocab}_{ctx}", f"E_{vocab}-{ctx}", "E"
        else:
            index = feature if feature is not None else output_nodes.index(node)
            node_id, js_id, np_feature, np_layer = (
                f"{logit_layer}_{index}_{ctx}",
                f"L_{index}-{ctx}",
                index,
                logit_layer,
            )
        if node_id in ids.values():
            clash = next(k for k, v in ids.items() if v == node_id)
            raise GraphError(
                f"nodes {clash!r} and {node!r} both map to Neuronpedia id {node_id!r}",
                hint="give position-free input/output nodes distinct 'feature' values",
            )
        ids[node] = node_id
        note = annotation(node, attrs, labels, None)
        token_prob = 0.0
        if kind == "output":
            # circuit-tracer reads the logit's token between the first two '"' and its
            # probability from '(p=...)' (formatData crashes without it)
            token_prob = float(attrs.get("probability") or 0.0)
            shown = (note or short_id(node, attrs)).replace('"', "'").replace("(p=", "(p =")
            clerp = f'Output "{shown}" (p={token_prob:.3f}) [{node}]'
        elif kind == "error":
            clerp = f"error at {attrs.get('site') or 'unknown site'} [{node}]"
        else:
            clerp = f"{note} [{node}]" if note else f"[{node}]"
        nodes.append(
            {
                "node_id": node_id,
                "feature": np_feature,
                "layer": np_layer,
                "ctx_idx": ctx,
                "feature_type": FEATURE_TYPES[kind],
                "token_prob": token_prob,
                "is_target_logit": kind == "output",
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": js_id,
                "clerp": clerp,
                "influence": influence.get(node),
                "activation": attrs.get("activation"),
                "effect": attrs.get("effect"),
            }
        )

    links = [
        {"source": ids[source], "target": ids[target], "weight": float(weight)}
        for source, target, weight in sorted(
            graph.edges(data="weight"), key=lambda e: (ids[e[0]], ids[e[1]])
        )
    ]
    from featcircuits import __version__  # lazy: featcircuits/__init__ may import this module

    metadata = {
        "slug": slug,
        "scan": str(scan),
        "transcoder_list": [],
        "prompt_tokens": tokens,
        "prompt": prompt if prompt is not None else "".join(graph.graph.get("prompt_tokens") or []),
        "node_threshold": node_threshold,
        "schema_version": 1,
        "info": {
            "creator_name": "featcircuits",
            "generator": {"name": "featcircuits", "version": __version__},
        },
        "featcircuits": {
            "target": graph.graph.get("target"),
            "metric": graph.graph.get("metric"),
            "method": graph.graph.get("method"),
            "tau": graph.graph.get("tau"),
            "layers_are_model_layers": model_layers,
            "layers": {
                str(number): key[3]
                for key, number in sorted(layer_of_row.items(), key=lambda kv: kv[1])
            },
            "node_ids": {ids[n]: n for n in sorted(ids, key=natural_key)},
        },
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def write_neuronpedia_json(
    graph: nx.DiGraph,
    path: str | os.PathLike[str],
    *,
    slug: str,
    prompt: str | None = None,
    update_index: bool = True,
    **kwargs,
) -> Path:
    """Write :func:`to_neuronpedia_json` to ``path`` (atomically) and, by default, add the
    graph's metadata to ``graph-metadata.json`` in the same folder (replacing an entry with
    the same slug), the index circuit-tracer's local server reads."""
    data = to_neuronpedia_json(graph, slug=slug, prompt=prompt, **kwargs)
    target = Path(path)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if not update_index:
        atomic_write_text(target, text)
        return target
    index_path = target.parent / INDEX_FILENAME
    index = _read_index(index_path)
    entry = {k: v for k, v in data["metadata"].items() if k != "featcircuits"}
    index["graphs"] = [g for g in index["graphs"] if g.get("slug") != slug] + [entry]
    # the graph and the index naming it are one set: a kill leaves both old or both new
    with atomic_files(target.parent) as files:
        files.path(target.name).write_text(text, encoding="utf-8")
        files.path(INDEX_FILENAME).write_text(
            json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def _read_index(index_path: Path) -> dict[str, Any]:
    """The ``graph-metadata.json`` index to update (``{"graphs": []}`` when absent), read
    with the bounded reader (a FIFO or device in its place is refused, not read)."""
    path = committed_path(index_path)
    if not path.exists() and not path.is_symlink():
        return {"graphs": []}
    hint = "delete the broken index file or pass update_index=False"
    try:
        index = parse_json(read_bytes_limited(path, GRAPH_FILE_LIMIT, "circuit-tracer index",
                                              error=OutputError),
                           f"circuit-tracer index {str(index_path)!r}", error=OutputError)
    except OutputError as exc:
        raise OutputError(f"cannot update {str(index_path)!r}: {exc.message}", hint=hint) from exc
    if not isinstance(index, dict) or not isinstance(index.get("graphs"), list):
        raise OutputError(f"cannot update {str(index_path)!r}: it has no 'graphs' list",
                          hint=hint)
    return index
