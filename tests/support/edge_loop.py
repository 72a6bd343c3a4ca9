"""Attribution edges the way feature-circuits computes them: plain torch, one backward per
downstream node. The reference that ``featcircuits.circuits.attribution.gradient_edges``
(which batches downstream nodes as copies of the data) is checked against, in the tests and
in ``benchmarks/scale.py``.

One forward pass of the model through torch forward hooks on its transformers modules:

* at every dictionary site with a direct effect on the level (``direct_sites``: from the last
  whole-state site before it), the activation ``x`` is detached, its features
  ``c = encode(x)`` ``[n, T, F]`` and error ``e = x − decode(c)`` become leaves requiring
  gradients, and ``decode(c) + e`` goes on in its place — so the gradient reaching a site is
  the direct one, as featcircuits defines edges (every dictionary site above the level is
  detached);
* at the level, ``encode(x_level)`` is kept (every feature, with its graph).

Then, per downstream feature ``f`` at the level, ``torch.autograd.grad`` of its value
``Σ_i Σ_t w_it c_f`` (``w``: the runs' node weights, ``token_mask / length`` for mean nodes)
w.r.t. every leaf, with the graph retained; the edge weight from upstream feature ``u`` is
``mean_i Σ_t (c_u − s_u) ∂d/∂c_u`` over real tokens (zero ablation: ``s_u = 0``), and from
an upstream error node ``mean_i Σ_t (e − s_e) · ∂d/∂e``. Only zero ablation, non-positional
nodes, dictionaries that read where they write (no transcoders) and sites that are module
outputs (``embed``, ``attn_out``, ``mlp_out``, ``resid_out``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from featcircuits.engine.runs import ERROR, direct_sites
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import Site
from tests.support.hooks import on_hidden

OUTPUT_KINDS = ("embed", "attn_out", "mlp_out", "resid_out")


def per_node_edges(runs, level: str, downstream: Sequence[tuple],
                   upstream: Mapping[str, Sequence[tuple]]) -> dict[tuple, float]:
    """``{(upstream node, downstream node): weight}`` by one backward per downstream node.

    ``runs``: a ``CircuitRuns`` (only its model, dictionaries, token ids, token mask and node
    weights are used); ``level``: a dictionary site; ``downstream``: feature nodes
    ``(level, f, None)``; ``upstream``: ``{site: nodes}`` (features and error nodes).
    """
    module = underlying_module(runs.model)
    reachable = direct_sites(runs.sites, Site.parse(level).depth)
    for site in [*reachable, level]:
        dictionary = runs.dictionaries[site]
        if Site.parse(site).kind not in OUTPUT_KINDS or dictionary.input_site not in (None, site):
            raise ValueError(f"the reference loop cannot hook {site} ({dictionary!r})")
    if any(node[2] is not None for nodes in upstream.values() for node in nodes) or any(
            node[1] == ERROR or node[2] is not None for node in downstream):
        raise ValueError("the reference loop takes non-positional nodes, features downstream")
    if not bool((runs.token_mask > 0).all()):
        raise ValueError("the reference loop runs unpadded prompts only")
    leaves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    level_features: list[torch.Tensor] = []

    def hold(site):
        dictionary = runs.dictionaries[site]

        def fn(_module, _args, hidden):
            x = hidden.detach()
            features = dictionary.encode(x).detach().requires_grad_(True)        # [n, T, F]
            error = (x - dictionary.decode(features)).detach().requires_grad_(True)
            leaves[site] = (features, error)
            return dictionary.decode(features) + error

        return fn

    def read(_module, _args, hidden):
        level_features.append(runs.dictionaries[level].encode(hidden))         # [n, T, F]

    handles = [Site.parse(site).module(module).register_forward_hook(on_hidden(hold(site)))
               for site in reachable]
    handles.append(Site.parse(level).module(module).register_forward_hook(on_hidden(read)))
    try:
        with torch.enable_grad():
            module(runs.ids)
    finally:
        for handle in handles:
            handle.remove()
    (features,) = level_features
    sites = [s for s in reachable if upstream.get(s)]
    inputs = [leaf for s in sites for leaf in leaves[s]]
    mask = runs.token_mask[..., None]                                            # [n, T, 1]
    weights: dict[tuple, float] = {}
    for node in downstream:
        with torch.enable_grad():
            value = (features[..., node[1]] * runs.node_weights).sum()
            grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
        for k, site in enumerate(sites):
            (c, e), (grad_c, grad_e) = leaves[site], grads[2 * k:2 * k + 2]
            with torch.no_grad():
                per_feature = ((c * mask * (0 if grad_c is None else grad_c))
                               .sum(1).mean(0))                                   # [F]
                error = float((e * mask * (0 if grad_e is None else grad_e)).sum((1, 2)).mean())
            for up in upstream[site]:
                weights[(up, node)] = error if up[1] == ERROR else float(per_feature[up[1]])
    return weights
