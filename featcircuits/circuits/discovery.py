"""Feature circuits: discovery by exact ablation (ACDC), attribution, or both (hybrid).

Nodes are dictionary features (and each site's error term) at the dictionary sites, either
summed over token positions or one per position (``positional=True``); the targets (a
feature, a logit or a metric, see ``featcircuits.circuits.targets``) are the sinks. An edge ``u → d``
carries the **direct effect** of ``u`` on ``d``::

    weight(u → d) = d(clean) − d(u ablated, every dictionary site between u and d frozen)

averaged over prompts. Ablating ``u`` is ``x −= (c_u − source_u) f_u`` at u's site with the
error kept (``patching.patch_site``); ablating an error node replaces the error term by its
source (``patching.patch_error``). Sites between ``u`` and ``d`` are held at their clean
values, so the weight does not include paths through other dictionary sites (with residual
-stream dictionaries at every layer, edges join adjacent layers). Node values are defined in
``featcircuits.engine.runs``. A node's ``effect`` is the change of the summed targets when it
alone is ablated (no freezing): ``m(clean) − m(node ablated)``.

* ``acdc_circuit`` measures every edge by ablation: walking backwards over the sites, every
  candidate upstream node is ablated (many per forward pass, stacked along the batch) and the
  change of every downstream node still in the graph is read; edges with ``|weight| < tau``
  are dropped, then nodes without a path to a target.
* ``attribution_circuit`` estimates node effects by attribution patching
  (``(c − source) · ∂m/∂c``) or integrated gradients, keeps nodes with ``|effect| >=
  node_tau``, and estimates edges by ``(c_u − source_u) · ∂d/∂c_u`` with one backward pass
  per downstream node (copies stacked along the batch, sites in between detached).
* ``hybrid_circuit`` ranks edges by attribution and verifies the top ones by ablation, and
  reports how many attribution got wrong.
* ``feature_graph`` is the seed paper's graph between two dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import pandas as pd
import torch
from tqdm.auto import tqdm

from featcircuits.circuits.targets import FeatureTarget, Target
from featcircuits.dictionaries.base import Dictionary
from featcircuits.engine.runs import (
    ERROR,
    CircuitRuns,
    Readout,
    SiteOps,
    direct_sites,
    repeat_rows,
)
from featcircuits.errors import ParameterError
from featcircuits.graph.ops import FORMAT_VERSION, check_tau, make_node_id, reaching
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import Site

Node = tuple[str, int, "int | None"]  # (site, feature id or ERROR, position or None)
IG_METHODS = ("attribution", "ig")


# ---------------------------------------------------------------------------- helpers
def circuit_runs(model, dictionaries=None, inputs=None, *, targets=None, max_rows: int = 256,
                 max_memory: int | str | None = None,
                 seed: int = 0, progress: bool = True, node_reduce: str = "mean") -> CircuitRuns:
    """A ``CircuitRuns`` (passed through when ``model`` already is one)."""
    if isinstance(model, CircuitRuns):
        if dictionaries is not None or inputs is not None or targets is not None:
            raise ParameterError("pass either a CircuitRuns or model, dictionaries, inputs and "
                                 "targets, not both")
        return model
    if dictionaries is None or inputs is None or targets is None:
        raise ParameterError("circuit discovery needs model, dictionaries, inputs and targets",
                             hint="e.g. acdc_circuit(model, {'resid_out.0': sae}, prompts, "
                             "targets='logit_diff', tau=0.1)")
    return CircuitRuns(model, dictionaries, inputs, targets=targets, node_reduce=node_reduce,
                       max_rows=max_rows, max_memory=max_memory, seed=seed, progress=progress)


def node_id(node: Node) -> str:
    """The graph id of an internal node ``(site, feature or ERROR, position)``."""
    site, index, position = node
    if index == ERROR:
        return make_node_id(site, None, position, kind="error")
    return make_node_id(site, int(index), position,
                        kind="input" if Site.parse(site).kind == "embed" else "feature")


def _depth(site: str) -> float:
    return Site.parse(site).depth


def _check_options(ablation: str, positional: bool) -> None:
    from featcircuits.engine.runs import ABLATIONS

    if ablation not in ABLATIONS:
        raise ParameterError(f"unknown ablation {ablation!r}",
                             hint=f"use one of {', '.join(ABLATIONS)}")
    if not isinstance(positional, bool):
        raise ParameterError(f"positional must be True or False, got {positional!r}")


def edge_threshold(runs: CircuitRuns, downstream, tau: float, relative: bool) -> float:
    """The ``|weight|`` an edge into ``downstream`` needs: ``tau``, or ``tau`` times the
    downstream node's typical magnitude (``CircuitRuns.node_scale``) when ``relative``."""
    return tau * runs.node_scale(downstream) if relative else tau


def _keeps(weight: float, threshold: float) -> bool:
    """An edge is kept when ``|weight| >= threshold``; a zero weight is never an edge."""
    return weight != 0 and abs(weight) >= threshold


def upstream_sites(runs: CircuitRuns) -> list[str]:
    """Dictionary sites that can influence a target (shallower than the deepest target)."""
    deepest = runs.max_target_depth
    return [site for site in runs.sites if _depth(site) < deepest]


def candidate_nodes(runs: CircuitRuns, site: str, *, ablation: str, positional: bool,
                    candidates: Mapping[str, Sequence[int]] | None = None,
                    errors: bool = True) -> list[Node]:
    """Nodes at ``site`` worth ablating: features whose source differs from their clean value
    somewhere on the data (optionally only those listed in ``candidates[site]``), plus the
    error node (one per position when ``positional``)."""
    active = runs.active_features(site, ablation, positional)
    if candidates is not None:
        allowed = {int(f) for f in candidates.get(site, [])}
        if positional:
            active = [(f, p) for f, p in active if f in allowed]
        else:
            active = [f for f in active if f in allowed]
    if positional:
        nodes = [(site, f, p) for f, p in active]
        if errors:
            nodes += [(site, ERROR, p) for p in runs.error_positions()]
    else:
        nodes = [(site, f, None) for f in active]
        if errors:
            nodes.append((site, ERROR, None))
    return nodes


# ------------------------------------------------------------------ exact ablation
def ablation_effects(runs: CircuitRuns, site: str, nodes: Sequence[Node],
                     downstream: Mapping[str, Sequence[Node]], *, ablation: str,
                     positional: bool, freeze: bool = True, progress: bool | None = None
                     ) -> tuple[torch.Tensor, list]:
    """Ablate each of ``nodes`` (all at ``site``) alone and read the downstream nodes.

    Many nodes are ablated per forward pass (copies of the data stacked along the batch).
    With ``freeze`` every dictionary site after ``site`` is held at its clean value after
    being read, so readings are direct effects.

    Returns:
        ``effects [len(nodes), n_columns]``: ``value(clean) − value(ablated)`` averaged over
        prompts, and the columns: the downstream nodes (in site order) followed by the ids
        of the targets deeper than ``site``.
    """
    source_features, source_errors = runs.sources(ablation)
    depth = _depth(site)

    def reached(target_depth: float) -> bool:
        # with later sites frozen, only sites with no whole-state site in between are reached
        return not freeze or site in direct_sites(runs.sites, target_depth)

    live_targets = [i for i, t in enumerate(runs.targets)
                    if (t.is_output or _depth(t.site) > depth)
                    and reached(runs.read_depth(t.site))]
    later = [s for s in runs.sites if _depth(s) > depth and _depth(s) < runs.max_target_depth]
    plans = {}
    columns: list = []
    for j in later:
        if not reached(runs.read_depth(j)):
            continue
        down = [node for node in downstream.get(j, [])]
        if not down:
            continue
        feature_ids = sorted({f for _, f, _ in down if f != ERROR})
        plans[j] = (down, torch.tensor(feature_ids, dtype=torch.long, device=runs.device),
                    any(f == ERROR for _, f, _ in down))
        columns.extend(down)
    columns.extend(runs.targets[i].node_id for i in live_targets)
    baseline = _baseline(runs, plans, live_targets, positional)
    # copies only differ from ``site`` on: run the layers before it once and tile there
    tile = site if all(t.is_output or _depth(t.site) >= depth for t in runs.targets) else None
    need_outputs = any(runs.targets[i].is_output for i in live_targets)
    per_chunk = runs.chunk_copies()
    chunks = range(0, len(nodes), per_chunk)
    show = runs.progress if progress is None else progress
    out = []
    for start in tqdm(chunks, desc=f"ablate {site}", leave=False,
                      disable=not show or len(chunks) < 3):
        chunk = nodes[start:start + per_chunk]
        copies = len(chunk)
        ops = {site: _ablation_ops(runs, site, chunk, source_features[site],
                                   source_errors[site])}
        for j in later:
            op = SiteOps()
            if j in plans:
                _, ids, has_error = plans[j]
                op.readout = Readout(feature_ids=ids if len(ids) else None, error=has_error,
                                     error_vector=repeat_rows(runs.gradients[j], copies),
                                     weights=None if positional
                                     else repeat_rows(runs.node_weights, copies))
            if freeze:
                op.freeze = repeat_rows(runs.activations[j], copies)
            if op.readout is not None or op.freeze is not None:
                ops[j] = op
        with torch.no_grad():
            result = runs.trace(ops, copies, tile_at=tile, outputs=need_outputs)
        out.append(_collect(runs, result, plans, live_targets, copies, positional))
    if not out:
        return torch.zeros(0, len(columns), device=runs.device), columns
    ablated = torch.cat(out)
    return baseline[None, :] - ablated, columns


def _ablation_ops(runs: CircuitRuns, site: str, chunk: Sequence[Node],
                  source_features: torch.Tensor, source_errors: torch.Tensor) -> SiteOps:
    n, width = runs.n, runs.width
    copies = len(chunk)
    tm = runs.token_mask
    position_mask = torch.zeros(copies, n, width, device=tm.device)
    for i, (_, _, position) in enumerate(chunk):
        if position is None:
            position_mask[i] = tm
        else:
            position_mask[i, :, position] = tm[:, position]
    position_mask = position_mask.reshape(copies * n, width)
    used = sorted({f for _, f, _ in chunk if f != ERROR})
    op = SiteOps()
    if used:
        used_ids = torch.tensor(used, dtype=torch.long, device=tm.device)
        column = {f: k for k, f in enumerate(used)}
        feature_mask = torch.zeros(copies, len(used), device=tm.device)
        for i, (_, f, _) in enumerate(chunk):
            if f != ERROR:
                feature_mask[i, column[f]] = 1.0
        op.patch = {"source_features": repeat_rows(source_features[..., used_ids], copies),
                    "feature_mask": feature_mask.repeat_interleave(n, 0),
                    "position_mask": position_mask, "feature_ids": used_ids}
    error_rows = torch.tensor([1.0 if f == ERROR else 0.0 for _, f, _ in chunk], device=tm.device)
    if error_rows.any():
        op.patch_err = {"source_error": repeat_rows(source_errors, copies),
                        "error_mask": error_rows.repeat_interleave(n),
                        "position_mask": position_mask}
    return op


def _baseline(runs: CircuitRuns, plans, live_targets, positional) -> torch.Tensor:
    """``[n_columns]`` the clean values of the columns of ``ablation_effects``."""
    tm = runs.token_mask
    weights = runs.node_weights
    columns = []
    for j, (down, ids, _) in plans.items():
        index = {int(f): k for k, f in enumerate(ids.tolist())}
        features = runs.features[j][..., ids]                              # [n, T, k]
        error = (runs.errors[j] * runs.gradients[j]).sum(-1)               # [n, T]
        for _, f, position in down:
            value = error if f == ERROR else features[..., index[f]]
            columns.append((value * weights).sum(1).mean(0) if position is None
                           else (value * tm)[:, position].mean(0))
    clean_targets = runs.target_values.mean(0)
    columns.extend(clean_targets[i] for i in live_targets)
    if not columns:
        return torch.zeros(0, device=runs.device)
    return torch.stack([column.float() for column in columns])


def _collect(runs: CircuitRuns, result, plans, live_targets, copies: int, positional: bool
             ) -> torch.Tensor:
    """``[copies, n_columns]`` prompt-averaged readings of one chunk."""
    n = runs.n
    tm = runs.token_mask
    columns = []
    for j, (down, ids, _) in plans.items():
        index = {int(f): k for k, f in enumerate(ids.tolist())}
        features = result.features.get(j)
        errors = result.errors.get(j)
        if positional:
            if features is not None:
                features = (features.reshape(copies, n, *features.shape[1:])
                            * tm[None, ..., None]).mean(1)              # [c, T, k]
            if errors is not None:
                errors = (errors.reshape(copies, n, -1) * tm[None]).mean(1)  # [c, T]
        else:
            if features is not None:
                features = features.reshape(copies, n, -1).mean(1)         # [c, k]
            if errors is not None:
                errors = errors.reshape(copies, n).mean(1)                  # [c]
        for _, f, position in down:
            if f == ERROR:
                columns.append(errors if position is None else errors[:, position])
            else:
                columns.append(features[..., index[f]] if position is None
                               else features[:, position, index[f]])
    if live_targets:
        targets = result.targets.reshape(copies, n, -1).mean(1)
        columns.extend(targets[:, i] for i in live_targets)
    if not columns:
        return torch.zeros(copies, 0, device=runs.device)
    return torch.stack([column.float() for column in columns], dim=1)


def exact_node_effects(runs: CircuitRuns, nodes: Sequence[Node], *, ablation: str,
                       positional: bool) -> dict[Node, float]:
    """``m(clean) − m(node ablated)`` for each node (``m`` = summed targets deeper than the
    node), nodes at one site per batched pass."""
    effects: dict[Node, float] = {}
    by_site: dict[str, list[Node]] = {}
    for node in nodes:
        by_site.setdefault(node[0], []).append(node)
    for site, group in by_site.items():
        values, _ = ablation_effects(runs, site, group, {}, ablation=ablation,
                                     positional=positional, freeze=False)
        for node, row in zip(group, values):
            effects[node] = float(row.sum())
    return effects


# ----------------------------------------------------------------------- attribution
def attribution_gradients(runs: CircuitRuns, site: str, *, ablation: str, method: str,
                          steps: int) -> torch.Tensor:
    """``[n, T, d]`` gradient of the summed targets w.r.t. ``site``: at the clean run
    (``attribution``) or averaged over ``steps`` points between clean and ablated
    (``ig``, midpoint rule; only ``site`` is interpolated)."""
    if method == "attribution":
        return runs.gradients[site]
    if method != "ig":
        raise ParameterError(f"unknown attribution method {method!r}",
                             hint=f"use one of {IG_METHODS}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParameterError(f"steps must be a positive int, got {steps!r}")
    clean = runs.activations[site]
    source = runs.source_activation(site, ablation)
    alphas = (torch.arange(steps, dtype=torch.float32, device=clean.device) + 0.5) / steps
    per_chunk = runs.chunk_copies()
    total = torch.zeros(clean.shape, device=clean.device)  # float32 even for a bf16 model
    for start in range(0, steps, per_chunk):
        chunk = alphas[start:start + per_chunk]
        copies = len(chunk)
        points = clean[None] - chunk[:, None, None, None] * (clean - source)[None]
        delta = torch.zeros(copies * runs.n, runs.width, clean.shape[-1], device=clean.device,
                            requires_grad=True)
        ops = {site: SiteOps(overwrite=points.reshape(copies * runs.n, runs.width, -1),
                             delta=delta)}
        with torch.enable_grad():
            result = runs.trace(ops, copies)
            (grad,) = torch.autograd.grad(result.targets.sum(), [delta], allow_unused=True)
        if grad is not None:
            total += grad.reshape(copies, runs.n, runs.width, -1).sum(0)
    return total / steps


def _contributions(runs: CircuitRuns, site: str, gradient: torch.Tensor, nodes: Sequence[Node],
                   *, ablation: str, positional: bool) -> torch.Tensor:
    """``[copies, len(nodes)]`` estimates ``(c_u − s_u) · (g · f_u)`` for gradients
    ``[copies, n, T, d]`` (summed over positions unless the node is positional; mean over
    prompts)."""
    source_features, source_errors = runs.sources(ablation)
    tm = runs.token_mask
    dictionary = runs.dictionaries[site]
    feature_ids = sorted({f for _, f, _ in nodes if f != ERROR})
    device = gradient.device
    out = torch.zeros(gradient.shape[0], len(nodes), device=device)
    with torch.no_grad():
        if feature_ids:
            ids = torch.tensor(feature_ids, dtype=torch.long, device=device)
            per_position = torch.empty(gradient.shape[0], runs.width, len(feature_ids),
                                       device=device)
            step = runs.feature_chunk(gradient.shape[0] * runs.n)
            for first in range(0, len(feature_ids), step):  # [c, n, T, step] within budget
                block = ids[first:first + step]
                diff = (runs.features[site][..., block]
                        - source_features[site][..., block]) * tm[..., None]
                directions = dictionary.directions[block].to(gradient.dtype)
                along = gradient @ directions.T                           # [c, n, T, k]
                per_position[..., first:first + step] = (along * diff[None]).mean(1)
            column = {f: k for k, f in enumerate(feature_ids)}
        error_diff = (runs.errors[site] - source_errors[site]) * tm[..., None]
        error_per_position = (gradient * error_diff[None]).sum(-1).mean(1)   # [c, T]
        for i, (_, f, position) in enumerate(nodes):
            values = error_per_position if f == ERROR else per_position[..., column[f]]
            out[:, i] = values.sum(-1) if position is None else values[:, position]
    return out


def node_attributions(runs: CircuitRuns, *, ablation: str = "zero", positional: bool = False,
                      method: str = "attribution", steps: int = 10,
                      candidates: Mapping[str, Sequence[int]] | None = None,
                      errors: bool = True) -> dict[Node, float]:
    """Estimated ``m(clean) − m(node ablated)`` of every candidate node (all upstream sites).

    ``attribution``: ``(c − s) · ∂m/∂c`` at the clean run (one backward pass, cached);
    ``ig``: integrated gradients with ``steps`` points per site. Per site, features plus the
    error node add up to ``(x − x_source) · g``: exactly ``m(clean) − m(site ablated)`` when
    ``m`` is linear in the site, and up to the Riemann error for ``ig`` in general.
    """
    effects: dict[Node, float] = {}
    for site in upstream_sites(runs):
        nodes = candidate_nodes(runs, site, ablation=ablation, positional=positional,
                                candidates=candidates, errors=errors)
        if not nodes:
            continue
        gradient = attribution_gradients(runs, site, ablation=ablation, method=method,
                                         steps=steps)
        values = _contributions(runs, site, gradient[None], nodes, ablation=ablation,
                                positional=positional)[0]
        effects.update({node: float(v) for node, v in zip(nodes, values)})
    return effects


def gradient_edges(runs: CircuitRuns, level: str | None, downstream: Sequence,
                   upstream: Mapping[str, Sequence[Node]], *, ablation: str, positional: bool
                   ) -> dict[tuple, float]:
    """Attribution edge weights into ``downstream`` nodes at one level.

    ``level`` is a site (``downstream``: nodes at it and/or indices of feature targets at
    it) or ``None`` (``downstream``: indices of output targets). One backward pass per
    chunk of copies: copy ``k`` backpropagates its own node's value; every dictionary site
    above the level is detached (so gradients are direct), and the gradient at each upstream
    site gives ``(c_u − s_u) · ∂d/∂c_u`` for all its nodes at once.

    Returns ``{(upstream node, downstream node or target id): weight}``.
    """
    n, width = runs.n, runs.width
    tm = runs.token_mask
    depth = runs.read_depth(level)
    # sites before the last whole-state site (embed/resid) have no direct edge to the level
    reachable = direct_sites(runs.sites, depth)
    up_sites = [s for s in reachable if upstream.get(s)]
    weights: dict[tuple, float] = {}
    if not up_sites or not downstream:
        return weights
    early_targets = any(not t.is_output and _depth(t.site) < _depth(reachable[0])
                        for t in runs.targets)
    per_chunk = runs.chunk_copies()
    for start in range(0, len(downstream), per_chunk):
        chunk = list(downstream[start:start + per_chunk])
        copies = len(chunk)
        deltas = {s: torch.zeros(copies * n, width, runs.dictionaries[s].d_model,
                                 device=runs.device, requires_grad=True)
                  for s in reachable}
        ops = {s: SiteOps(delta=delta, detach=True) for s, delta in deltas.items()}
        if level is not None:
            own_feature = torch.zeros(copies, dtype=torch.long, device=runs.device)
            own_weights = torch.zeros(copies, n, width, device=runs.device)
            for k, item in enumerate(chunk):
                if isinstance(item, int):          # a feature target at this site
                    target = runs.targets[item]
                    own_feature[k] = target.feature
                    own_weights[k] = target.weights
                else:
                    _, f, position = item
                    own_feature[k] = f
                    if position is None:
                        own_weights[k] = runs.node_weights
                    else:
                        own_weights[k, :, position] = tm[:, position]
            ops[level] = SiteOps(readout=Readout(
                own_feature=own_feature.repeat_interleave(n),
                own_weights=own_weights.reshape(copies * n, width),
                error_vector=repeat_rows(runs.gradients[level], copies)))
        with torch.enable_grad():
            result = runs.trace(ops, copies, tile_at=None if early_targets else reachable[0],
                                outputs=level is None)
            if level is None:
                picks = torch.tensor(chunk, device=result.targets.device).repeat_interleave(n)
                loss = result.targets.gather(1, picks[:, None]).sum()
            else:
                loss = result.own[level].sum()
            grads = torch.autograd.grad(loss, [deltas[s] for s in up_sites],
                                        allow_unused=True)
        for s, grad in zip(up_sites, grads):
            if grad is None:
                grad = torch.zeros(copies * n, width, runs.dictionaries[s].d_model,
                                   device=runs.device)
            values = _contributions(runs, s, grad.reshape(copies, n, width, -1),
                                    upstream[s], ablation=ablation, positional=positional)
            for item, row in zip(chunk, values.tolist()):
                key = _down_key(runs, item, level)
                weights.update(((node, key), value) for node, value in zip(upstream[s], row))
    return weights


def _down_key(runs: CircuitRuns, item, level):
    """Node of a downstream item: targets become their node id (a str)."""
    if isinstance(item, int):
        return runs.targets[item].node_id
    return item


# ------------------------------------------------------------------------- graphs
def _model_name(runs: CircuitRuns) -> str:
    try:
        config = underlying_module(runs.model).config
        return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", ""))
    except Exception:  # noqa: BLE001 - a name is cosmetic
        return ""


def _feature_label(dictionary: Dictionary, site: str, feature: int) -> str:
    labeller = getattr(dictionary, "feature_label", None)
    if callable(labeller):
        return str(labeller(feature))
    return ""


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


def graph_nodes(graph: nx.DiGraph) -> list[Node]:
    """Internal nodes ``(site, feature or ERROR, position)`` of a graph's feature, error and
    input nodes that belong to a site (targets excluded)."""
    from featcircuits.graph.ops import parse_node_id, target_nodes

    targets = set(target_nodes(graph))
    nodes = []
    for ident in graph.nodes:
        if ident in targets:
            continue
        key = parse_node_id(ident)
        if key.site is None:
            continue
        nodes.append((key.site, ERROR if key.kind == "error" else key.feature, key.position))
    return nodes


# ------------------------------------------------------------------------ discovery
def acdc_circuit(model, dictionaries: Mapping[str, Dictionary] | None = None, inputs=None, *,
                 targets: Target | str | Sequence | None = None, tau: float,
                 ablation: str = "zero", positional: bool = False,
                 candidates: Mapping[str, Sequence[int]] | None = None, errors: bool = True,
                 node_effects: bool = True, node_reduce: str = "mean",
                 relative_tau: bool = False, max_rows: int = 256,
                 max_memory: int | str | None = None, seed: int = 0,
                 progress: bool = True) -> nx.DiGraph:
    """Circuit by exact ablation, pruned backwards site by site.

    Args:
        model: nnsight ``LanguageModel`` — or a ``CircuitRuns`` (then omit dictionaries,
            inputs and targets).
        dictionaries: ``{site: Dictionary}``; their sites are the graph's layers.
        inputs: prompt pairs, texts or token ids (``circuit_runs.read_inputs``).
        targets: what to explain (``featcircuits.circuits.targets``): ``"logit_diff"``,
            ``FeatureTarget(site, id, positions)``, ``LogitTarget(token)``, or a list.
        tau: keep edges with ``|weight| >= tau`` (and ``weight != 0``).
        relative_tau: instead keep edges with ``|weight| >= tau × scale(d)``, ``scale(d)`` the
            downstream node's typical magnitude (``CircuitRuns.node_scale``), so that one
            ``tau`` suits nodes of different units (features of different layers, targets).
        ablation: ``zero``, ``mean``, ``resample`` or ``corrupt`` (prompt pairs).
        positional: one node per (feature, position) instead of per feature.
        candidates: ``{site: feature ids}`` to restrict the upstream features considered
            (default: every feature active somewhere on the data).
        errors: include error nodes.
        node_reduce: a node's value is the ``mean`` or ``sum`` over each prompt's tokens
            (ignored when ``model`` is a ``CircuitRuns``, which fixed it).
        node_effects: also measure each kept node's own effect (one more batched pass).

    Returns:
        the circuit (``networkx.DiGraph``; edges' ``method`` is ``"acdc"``).
    """
    tau = check_tau(tau)
    _check_options(ablation, positional)
    runs = circuit_runs(model, dictionaries, inputs, targets=targets, max_rows=max_rows,
                        max_memory=max_memory,
                        seed=seed, progress=progress, node_reduce=node_reduce)
    in_graph: dict[str, list[Node]] = {}
    edges: dict[tuple, float] = {}
    sites = upstream_sites(runs)
    for site in tqdm(list(reversed(sites)), desc="acdc", leave=False,
                     disable=not runs.progress or len(sites) < 2):
        depth = _depth(site)
        downstream = {j: in_graph[j] for j in in_graph if _depth(j) > depth and in_graph[j]}
        live_targets = [t for t in runs.targets if t.is_output or _depth(t.site) > depth]
        if not downstream and not live_targets:
            continue
        nodes = candidate_nodes(runs, site, ablation=ablation, positional=positional,
                                candidates=candidates, errors=errors)
        if not nodes:
            continue
        effects, columns = ablation_effects(runs, site, nodes, downstream, ablation=ablation,
                                            positional=positional)
        limits = torch.tensor([edge_threshold(runs, column, tau, relative_tau)
                               for column in columns], device=effects.device)
        kept = (effects.abs() >= limits[None, :]) & (effects != 0)
        for i, node in enumerate(nodes):
            hits = torch.nonzero(kept[i]).flatten().tolist()
            if not hits:
                continue
            in_graph.setdefault(site, []).append(node)
            row = effects[i].tolist()
            for column in hits:
                edges[(node, columns[column])] = row[column]
    nodes = [node for group in in_graph.values() for node in group]
    graph = build_graph(runs, nodes, edges, method="acdc", tau=tau, ablation=ablation,
                        positional=positional, relative_tau=bool(relative_tau))
    if node_effects:
        _set_exact_effects(runs, graph, ablation=ablation, positional=positional)
    return graph


def _set_exact_effects(runs: CircuitRuns, graph: nx.DiGraph, *, ablation: str,
                       positional: bool) -> None:
    nodes = graph_nodes(graph)
    for node, value in exact_node_effects(runs, nodes, ablation=ablation,
                                          positional=positional).items():
        graph.nodes[node_id(node)]["effect"] = value


def feature_graph(model, dictionaries: Mapping[str, Dictionary], inputs, *,
                  upstream: str, downstream: str, downstream_features: Sequence[int] | None = None,
                  tau: float = 0.0, ablation: str = "zero", errors: bool = False,
                  max_rows: int = 256,
                  max_memory: int | str | None = None, progress: bool = True) -> nx.DiGraph:
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
    if _depth(up) >= _depth(down):
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
                            max_rows=max_rows, max_memory=max_memory, progress=progress)
        active = (probe.features[down].abs() * probe.token_mask[..., None]).amax((0, 1)) > 0
        downstream_features = torch.nonzero(active).flatten().tolist()
    if not downstream_features:
        raise ParameterError(f"no feature of the dictionary at {down} is active on the data")
    targets = [FeatureTarget(down, int(f)) for f in downstream_features]
    return acdc_circuit(model, pair, inputs, targets=targets, tau=tau, ablation=ablation,
                        errors=errors, node_effects=False, max_rows=max_rows, max_memory=max_memory,
                        progress=progress)


def attribution_circuit(model, dictionaries: Mapping[str, Dictionary] | None = None,
                        inputs=None, *, targets: Target | str | Sequence | None = None,
                        tau: float, node_tau: float | None = None,
                        max_nodes: int | None = None, ablation: str = "zero",
                        positional: bool = False, method: str = "attribution",
                        steps: int = 10, candidates: Mapping[str, Sequence[int]] | None = None,
                        errors: bool = True, node_reduce: str = "mean",
                        relative_tau: bool = False, max_rows: int = 256,
                        max_memory: int | str | None = None, seed: int = 0,
                        progress: bool = True) -> nx.DiGraph:
    """Circuit by attribution patching (gradients), after Marks et al. (2024).

    Node effects ``(c − s) · ∂m/∂c`` (``method="attribution"``) or integrated gradients
    (``method="ig"``, ``steps`` points); nodes with ``|effect| >= node_tau`` (default
    ``tau``; with ``relative_tau`` a fraction of the targets' magnitude) are kept, at most
    ``max_nodes`` per site (the largest); edges between kept nodes are estimated from
    gradients of each downstream node (one backward pass per chunk of downstream nodes) and
    kept when
    ``|weight| >= tau``. Edge weights use the gradient at the clean run in both methods.
    Arguments as for ``acdc_circuit``.
    """
    tau = check_tau(tau)
    node_tau = tau if node_tau is None else check_tau(node_tau, "node_tau")
    runs, effects, kept = _attributed_nodes(
        model, dictionaries, inputs, targets=targets, node_tau=node_tau, max_nodes=max_nodes,
        ablation=ablation, positional=positional, method=method, steps=steps,
        candidates=candidates, errors=errors, node_reduce=node_reduce,
        relative_tau=relative_tau, max_rows=max_rows, max_memory=max_memory, seed=seed,
        progress=progress)
    edges, _ = _attribution_edges(runs, kept, tau, ablation=ablation, positional=positional,
                                  relative_tau=relative_tau)
    nodes = [node for group in kept.values() for node in group]
    return build_graph(runs, nodes, edges, method="attribution", tau=tau, ablation=ablation,
                       positional=positional, effects=effects, node_threshold=node_tau,
                       attribution=method, relative_tau=bool(relative_tau),
                       **({} if max_nodes is None else {"max_nodes": int(max_nodes)}))


def _attributed_nodes(model, dictionaries, inputs, *, targets, node_tau: float,
                      max_nodes: int | None, ablation: str, positional: bool, method: str,
                      steps: int, candidates, errors: bool, node_reduce: str,
                      relative_tau: bool, max_rows: int, max_memory, seed: int,
                      progress: bool) -> tuple[CircuitRuns, dict, dict]:
    """The step attribution and hybrid discovery share: check the options, cache the runs,
    attribute every candidate node and keep those above the node threshold.

    Returns ``(runs, effects, kept)``: ``effects`` maps each candidate to its attributed
    effect, ``kept`` maps each site to its kept nodes.
    """
    _check_options(ablation, positional)
    if method not in IG_METHODS:
        raise ParameterError(f"unknown attribution method {method!r}",
                             hint=f"use one of {IG_METHODS}")
    runs = circuit_runs(model, dictionaries, inputs, targets=targets, max_rows=max_rows,
                        max_memory=max_memory, seed=seed, progress=progress,
                        node_reduce=node_reduce)
    effects = node_attributions(runs, ablation=ablation, positional=positional, method=method,
                                steps=steps, candidates=candidates, errors=errors)
    kept = _keep_nodes(effects, node_limit(runs, node_tau, relative_tau), max_nodes)
    return runs, effects, kept


def node_limit(runs: CircuitRuns, node_tau: float, relative: bool) -> float:
    """The ``|effect|`` a node needs: ``node_tau``, or ``node_tau`` times the summed targets'
    typical magnitude when ``relative``."""
    if not relative:
        return node_tau
    return node_tau * sum(runs.node_scale(t.node_id) for t in runs.targets)


def _keep_nodes(effects: Mapping[Node, float], node_tau: float, max_nodes: int | None
                ) -> dict[str, list[Node]]:
    """Nodes with ``|effect| >= node_tau``, at most ``max_nodes`` per site (largest
    ``|effect|`` first), grouped by site."""
    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int)
                                  or max_nodes < 1):
        raise ParameterError(f"max_nodes must be a positive int or None, got {max_nodes!r}")
    kept: dict[str, list[Node]] = {}
    for node, value in sorted(effects.items(), key=lambda item: -abs(item[1])):
        if abs(value) < node_tau:
            break
        group = kept.setdefault(node[0], [])
        if max_nodes is None or len(group) < max_nodes:
            group.append(node)
    return kept


def _attribution_edges(runs: CircuitRuns, kept: Mapping[str, list[Node]], tau: float, *,
                       ablation: str, positional: bool, relative_tau: bool = False
                       ) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """Edges with ``|weight| >= tau`` among ``kept`` nodes, levels from the top down; also
    every weight computed."""
    in_graph: dict[str, set[Node]] = {}
    edges: dict[tuple, float] = {}
    computed: dict[tuple, float] = {}
    levels: list[str | None] = []
    if any(t.is_output for t in runs.targets):
        levels.append(None)
    levels += list(reversed(runs.sites))
    for level in tqdm(levels, desc="attribution edges", leave=False,
                      disable=not runs.progress or len(levels) < 3):
        if level is None:
            downstream = [i for i, t in enumerate(runs.targets) if t.is_output]
        else:
            downstream = [i for i, t in enumerate(runs.targets) if t.site == level]
            downstream += sorted(in_graph.get(level, set()), key=_node_order)
        depth = runs.read_depth(level)
        upstream = {s: nodes for s, nodes in kept.items() if _depth(s) < depth}
        weights = gradient_edges(runs, level, downstream, upstream, ablation=ablation,
                                 positional=positional)
        computed.update(weights)
        for (u, d), w in weights.items():
            if _keeps(w, edge_threshold(runs, d, tau, relative_tau)):
                edges[(u, d)] = w
                in_graph.setdefault(u[0], set()).add(u)
    return edges, computed


def _node_order(node: Node):
    site, f, position = node
    return (_depth(site), f, -1 if position is None else position)


@dataclass
class HybridResult:
    """What ``hybrid_circuit`` returns.

    Attributes:
        graph: the verified circuit (edges' ``method`` is ``"hybrid"``).
        comparison: one row per verified edge: ``source, target, attribution, exact,
            sign_agrees, threshold_agrees``.
        n_verified, n_wrong_sign, n_wrong_threshold: counts over verified edges
            (attribution's sign differs from the exact one / attribution and exact fall on
            different sides of ``tau``).
    """

    graph: nx.DiGraph
    comparison: pd.DataFrame
    n_verified: int
    n_wrong_sign: int
    n_wrong_threshold: int


def hybrid_circuit(model, dictionaries: Mapping[str, Dictionary] | None = None, inputs=None, *,
                   targets: Target | str | Sequence | None = None, tau: float,
                   node_tau: float | None = None, max_nodes: int | None = None,
                   screen: float = 0.25, max_verify: int | None = None, ablation: str = "zero",
                   positional: bool = False, method: str = "attribution", steps: int = 10,
                   candidates: Mapping[str, Sequence[int]] | None = None, errors: bool = True,
                   node_reduce: str = "mean", relative_tau: bool = False,
                   exact_node_effects: bool = False, max_rows: int = 256,
                   max_memory: int | str | None = None, seed: int = 0,
                   progress: bool = True) -> HybridResult:
    """Rank edges by attribution, verify the top ones by exact ablation.

    Nodes with attributed ``|effect| >= node_tau`` (default ``tau / 10``: a node missed here
    loses all its edges, so nodes are screened more loosely than edges) are kept (at
    most ``max_nodes`` per site, the largest); edges
    among them with attributed ``|weight| >= screen * tau`` are candidates; the
    ``max_verify`` largest (default: all) are measured exactly as in ``acdc_circuit``
    (ablating each distinct upstream node once, batched) and kept when the exact
    ``|weight| >= tau``. Graph attributes ``verified_edges``, ``attribution_wrong_sign`` and
    ``attribution_wrong_threshold`` record how often attribution was wrong. Node ``effect``s
    are the attributed ones unless ``exact_node_effects`` (one more batched ablation pass).
    """
    tau = check_tau(tau)
    if not 0 < screen <= 1:
        raise ParameterError(f"screen must be in (0, 1], got {screen!r}",
                             hint="attribution candidates need |weight| >= screen * tau")
    node_tau = tau / 10 if node_tau is None else check_tau(node_tau, "node_tau")
    runs, effects, kept = _attributed_nodes(
        model, dictionaries, inputs, targets=targets, node_tau=node_tau, max_nodes=max_nodes,
        ablation=ablation, positional=positional, method=method, steps=steps,
        candidates=candidates, errors=errors, node_reduce=node_reduce,
        relative_tau=relative_tau, max_rows=max_rows, max_memory=max_memory, seed=seed,
        progress=progress)
    screened, _ = _attribution_edges(runs, kept, screen * tau, ablation=ablation,
                                     positional=positional, relative_tau=relative_tau)
    ranked = sorted(screened.items(), key=lambda item: -abs(item[1]))
    if max_verify is not None:
        if isinstance(max_verify, bool) or not isinstance(max_verify, int) or max_verify < 0:
            raise ParameterError(f"max_verify must be a non-negative int, got {max_verify!r}")
        ranked = ranked[:max_verify]
    exact = verify_edges(runs, [edge for edge, _ in ranked], ablation=ablation,
                         positional=positional)
    rows, edges = [], {}
    for (u, d), estimate in ranked:
        value = exact[(u, d)]
        limit = edge_threshold(runs, d, tau, relative_tau)
        rows.append({"source": node_id(u), "target": d if isinstance(d, str) else node_id(d),
                     "attribution": estimate, "exact": value,
                     "sign_agrees": (estimate > 0) == (value > 0),
                     "threshold_agrees": _keeps(estimate, limit) == _keeps(value, limit)})
        if _keeps(value, limit):
            edges[(u, d)] = value
    comparison = pd.DataFrame(rows, columns=["source", "target", "attribution", "exact",
                                             "sign_agrees", "threshold_agrees"])
    wrong_sign = int((~comparison["sign_agrees"].astype(bool)).sum())
    wrong_threshold = int((~comparison["threshold_agrees"].astype(bool)).sum())
    nodes = sorted({u for u, _ in edges} | {d for _, d in edges if not isinstance(d, str)},
                   key=_node_order)
    graph = build_graph(runs, nodes, edges, method="hybrid", tau=tau, ablation=ablation,
                        positional=positional, effects=effects, node_threshold=node_tau,
                        verified_edges=len(rows), attribution_wrong_sign=wrong_sign,
                        attribution_wrong_threshold=wrong_threshold,
                        relative_tau=bool(relative_tau))
    if exact_node_effects:
        _set_exact_effects(runs, graph, ablation=ablation, positional=positional)
    return HybridResult(graph, comparison, len(rows), wrong_sign, wrong_threshold)


def verify_edges(runs: CircuitRuns, edges: Sequence[tuple], *, ablation: str,
                 positional: bool) -> dict[tuple, float]:
    """Exact (ablation) weights of ``edges`` ``[(upstream node, downstream node or target
    id)]``: each distinct upstream node is ablated once, batched per site."""
    by_site: dict[str, dict[Node, list]] = {}
    for u, d in edges:
        by_site.setdefault(u[0], {}).setdefault(u, []).append(d)
    exact: dict[tuple, float] = {}
    for site, groups in by_site.items():
        ups = sorted(groups, key=_node_order)
        downstream: dict[str, list[Node]] = {}
        for targets in groups.values():
            for d in targets:
                if not isinstance(d, str) and d not in downstream.get(d[0], []):
                    downstream.setdefault(d[0], []).append(d)
        values, columns = ablation_effects(runs, site, ups, downstream, ablation=ablation,
                                           positional=positional)
        index = {column: k for k, column in enumerate(columns)}
        for i, u in enumerate(ups):
            for d in groups[u]:
                exact[(u, d)] = float(values[i, index[d]])
    return exact


def all_edge_weights(runs: CircuitRuns, *, ablation: str = "zero", positional: bool = False,
                     candidates: Mapping[str, Sequence[int]] | None = None,
                     errors: bool = True) -> dict[str, dict[tuple, float]]:
    """Exact and attribution weights of every edge between candidate nodes (no pruning):
    ``{"exact": {...}, "attribution": {...}}``. For comparing the methods; costs one
    ablation per candidate and one backward per candidate."""
    nodes = {site: candidate_nodes(runs, site, ablation=ablation, positional=positional,
                                   candidates=candidates, errors=errors)
             for site in upstream_sites(runs)}
    exact: dict[tuple, float] = {}
    for site, group in nodes.items():
        downstream = {j: g for j, g in nodes.items() if _depth(j) > _depth(site)}
        values, columns = ablation_effects(runs, site, group, downstream, ablation=ablation,
                                           positional=positional)
        for i, u in enumerate(group):
            for k, column in enumerate(columns):
                exact[(u, column)] = float(values[i, k])
    attribution: dict[tuple, float] = {}
    levels: list[str | None] = [None] if any(t.is_output for t in runs.targets) else []
    for level in levels + list(runs.sites):
        if level is None:
            downstream = [i for i, t in enumerate(runs.targets) if t.is_output]
        else:
            downstream = [i for i, t in enumerate(runs.targets) if t.site == level]
            downstream += nodes.get(level, [])
        depth = runs.read_depth(level)
        upstream = {s: g for s, g in nodes.items() if _depth(s) < depth}
        attribution.update(gradient_edges(runs, level, downstream, upstream, ablation=ablation,
                                          positional=positional))
    return {"exact": exact, "attribution": {k: v for k, v in attribution.items() if k in exact}}
