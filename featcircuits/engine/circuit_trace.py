"""The batched trace engine of circuit runs: many edited copies of the data in one pass.

``trace_rows`` runs copies of the data in one forward pass: copy ``k`` of prompt ``i`` is
batch row ``k * n + i``. At each site, in forward order, a copy may have its activation
overwritten, features ablated (``patch_site``), its error term replaced (``patch_error``),
a zero "delta" added for gradients, node values read, and the site frozen to a given value
(so that later sites only see direct effects). What happens at a site is a ``SiteOps``;
which node values are read there is a ``NodeRead``.

Every dictionary is READ (encoded) at its ``input_site`` and WRITTEN (decoded: edits, error
term, freezing, deltas) at its ``site``. They differ for a transcoder: its input site is
read earlier in the same pass (after any operations there) and its features are encoded
from that activation, passed to ``patch_site`` / ``patch_error`` as ``x_in``.

A cross-layer transcoder layer also writes later sites: its patches carry edits there,
added when the trace reaches them (before that site's own operations, and on top of a
freeze), and its error node subtracts the earlier layers' writes (``SiteOps.earlier``);
see ``featcircuits.engine.carried``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import einops
import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.engine.carried import carried_sites, live_writers, live_writes
from featcircuits.engine.edits import (
    add_carried,
    input_site_of,
    patch_error,
    patch_features_and_error,
    patch_site,
)
from featcircuits.errors import ParameterError
from featcircuits.model.loading import forward_accepts, model_device, trace
from featcircuits.model.sites import Site

if TYPE_CHECKING:
    from featcircuits.circuits.targets import ResolvedTarget

__all__ = ["NodeRead", "SiteOps", "TraceResult", "repeat_rows", "tile_site", "trace_rows"]


@dataclass
class NodeRead:
    """Node values to read at one site (rows ``R``, positions ``T``).

    ``feature_ids [k]`` and ``error``: read these features / the error node; ``weights
    [R, T]`` reduce over positions (``None``: keep positions). ``own_feature [R]`` (``-1`` =
    error) with ``own_weights [R, T]``: each row reads its own node (gradient copies).
    ``full``: save all features ``[R, T, F]`` and the error ``[R, T, d]``.
    ``error_vector [R, T, d]``: the ``g`` of error-node values ``Σ_t w_t (e_t · g_t)``.
    """

    feature_ids: torch.Tensor | None = None
    error: bool = False
    error_vector: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    own_feature: torch.Tensor | None = None
    own_weights: torch.Tensor | None = None
    full: bool = False


@dataclass
class SiteOps:
    """What happens at one site in ``trace_rows`` (in this order)."""

    overwrite: torch.Tensor | None = None          # [R, T, d]
    patch: dict | None = None                      # kwargs of patch_site
    patch_err: dict | None = None                  # kwargs of patch_error
    delta: torch.Tensor | None = None              # [R, T, d] leaf requiring grad
    detach: bool = False                           # cut gradients flowing through the site
    readout: NodeRead | None = None
    freeze: torch.Tensor | None = None             # [R, T, d] written after reading
    save_activation: bool = False
    # [R, T, d] what earlier cross-layer transcoder layers write here, held at these values:
    # subtracted (with edits carried here) when this site's error is read or patched
    earlier: torch.Tensor | None = None


@dataclass
class TraceResult:
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    errors: dict[str, torch.Tensor] = field(default_factory=dict)
    own: dict[str, torch.Tensor] = field(default_factory=dict)
    full_features: dict[str, torch.Tensor] = field(default_factory=dict)
    full_errors: dict[str, torch.Tensor] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # transcoders' x_in
    targets: torch.Tensor | None = None            # [R, n_targets]


def repeat_rows(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """``[n, ...]`` → ``[(copies n), ...]`` (copy-major, matching the row layout)."""
    return einops.repeat(tensor, "n ... -> (k n) ...", k=copies)


def trace_rows(model, sites: Sequence[str], dictionaries: Mapping[str, Dictionary],
               ops: Mapping[str, SiteOps], input_ids: torch.Tensor,
               targets: Sequence[ResolvedTarget], copies: int, *,
               tile_at: str | None = None, outputs: bool = True) -> TraceResult:
    """One forward pass of ``input_ids [R, T]`` with per-site operations ``ops``.

    At each site (forward order): overwrite → read feature targets → ``patch_site`` →
    ``patch_error`` → add delta (after detaching, if asked) → read node values → freeze.
    Output targets are read from the logits. Returns saved values (see ``TraceResult``).
    A dictionary whose ``input_site`` differs from its site (a transcoder) encodes the
    activation read at the input site earlier in the same pass (after any operations there)
    and writes at its site; ``save_activation`` then also saves that input.
    With ``tile_at``, ``input_ids`` holds the ``n`` prompts once and the activation is
    tiled ``copies`` times at that site (no site before it may have operations; it need
    not have any itself). It must hold the model's whole state there (``embed``,
    ``resid_in``, ``resid_out``: see ``tile_site``): tiling only an attention or MLP output
    leaves the rest of the batch at ``n`` rows.
    With ``outputs=False`` (or no output targets) the run stops after the last site with
    operations or feature targets; output targets then read NaN.
    """
    tiled = tile_at is None
    if tile_at is not None:
        early = [site for site in sites if Site.parse(site).depth < Site.parse(tile_at).depth]
        if any(site in ops for site in early) or any(t.site in early for t in targets):
            raise ParameterError(f"cannot tile at {tile_at}: an earlier site has operations")
    result = TraceResult()
    saved: list[tuple[str, str, torch.Tensor]] = []
    target_values: list[torch.Tensor] = []
    feature_targets = {site: [(i, t) for i, t in enumerate(targets) if t.site == site]
                       for site in sites}
    output_targets = [(i, t) for i, t in enumerate(targets) if t.is_output] if outputs else []
    # the features each site's feature targets read (only those columns are encoded)
    target_ids = {site: sorted({t.feature for _, t in pairs})
                  for site, pairs in feature_targets.items()}
    target_columns = {site: torch.tensor(ids, dtype=torch.long, device=model_device(model))
                      for site, ids in target_ids.items() if ids}
    # sites that patches of cross-layer transcoder layers carry edits to are visited too
    carried_to = carried_sites(dictionaries, [s for s in sites if s in ops and ops[s].patch])
    # earlier CLT layers whose live writes an error patched without SiteOps.earlier needs
    live_from = live_writers(dictionaries, ops)
    active = [site for site in sites if site in ops or feature_targets[site]
              or site in carried_to or site in live_from]
    input_of = {site: str(input_site_of(dictionaries[site], site)) for site in active}
    # transcoders' input sites, read (in forward order) before the sites they write
    reads = {input_of[site] for site in active if input_of[site] != site}
    # the tile site need not have operations (it then only repeats rows there)
    order = sorted(set(active) | reads | ({tile_at} if tile_at is not None else set()),
                   key=lambda name: (Site.parse(name).depth, name not in active))
    last = None
    if not output_targets:
        last = active[-1] if active else None
    # the positions output targets read: the model's unembedding runs on those only
    logit_positions = _logit_positions(model, [t for _, t in output_targets], input_ids.shape[1])
    rows = input_ids.shape[0] * (copies if tile_at is not None else 1)
    inputs: dict[str, torch.Tensor] = {}   # input site → activation read there
    carry: dict[str, torch.Tensor] = {}    # later site → edit carried there (cross-layer)
    live: dict[str, torch.Tensor] = {}     # later site → earlier CLT layers' live writes
    keep = {} if logit_positions is None else {
        "logits_to_keep": torch.tensor(logit_positions, device=input_ids.device)}
    with trace(model, input_ids, **keep) as tracer:
        for site in order:
            resolved = Site.parse(site)
            if not tiled and site == tile_at:
                resolved.write(model, repeat_rows(resolved.read(model), copies))
                inputs = {name: repeat_rows(value, copies) for name, value in inputs.items()}
                live = {name: repeat_rows(value, copies) for name, value in live.items()}
                tiled = True
            if site not in active:
                if site in reads:
                    inputs[site] = resolved.read(model)
                continue
            op = ops.get(site) or SiteOps()
            dictionary = dictionaries[site]
            if op.overwrite is not None:
                resolved.write(model, _as_activation(op.overwrite, resolved.read(model)))
            carried = add_carried(model, resolved, carry)  # None unless a CLT patch wrote it
            x_in = inputs[input_of[site]] if input_of[site] != site else None
            if feature_targets[site]:
                # targets are read before this site's own edits: they are read-outs, not
                # nodes that an ablation at their own site could change
                wanted = target_ids[site]
                target_features = dictionary.encode_features(
                    resolved.read(model) if x_in is None else x_in, target_columns[site])
                for index, target in feature_targets[site]:
                    weights = repeat_rows(target.weights, copies)
                    column = wanted.index(target.feature)
                    value = (target_features[..., column] * weights).sum(-1)
                    target_values.append((index, value.save()))
            for later in live_from.get(site, ()):  # this layer's writes before its patch
                written = live_writes(dictionary, resolved.read(model) if x_in is None
                                      else x_in, later)
                live[later] = written if later not in live else live[later] + written
            edit = None
            earlier = op.earlier if op.earlier is not None else live.get(site)
            if (op.patch is not None and op.patch_err is not None and carried is None
                    and earlier is None and not dictionary.later_writes):
                # features and error together: one encode, one decode
                patch_features_and_error(model, resolved, dictionary, op.patch,
                                         _in_dtype(op.patch_err, resolved.read(model).dtype),
                                         x_in=x_in)
                op = _without_patches(op)
            if op.patch is not None:
                edit = patch_site(model, resolved, dictionary, **op.patch, x_in=x_in,
                                  carry=carry if dictionary.later_writes else None)
            if op.patch_err is not None:
                # masks in the activation's dtype, so that a bf16 model gets bf16 back
                patch_err = _in_dtype(op.patch_err, resolved.read(model).dtype)
                patch_error(model, resolved, dictionary, **patch_err,
                            prior_edit=_not_own(edit, carried, earlier), x_in=x_in)
            x = resolved.read(model)
            if op.delta is not None or op.detach:
                x = x.detach() if op.detach else x
                if op.delta is not None:
                    # the delta is float32 (exact gradients); the model gets its dtype back
                    x = x + _as_activation(op.delta, x)
                resolved.write(model, x)
            if op.save_activation:
                saved.append(("activation", site, x.save()))
                if x_in is not None:
                    saved.append(("input", site, x_in.save()))
            if op.readout is not None:
                not_own = _not_own(None, carried, op.earlier)
                own_x = x if not_own is None else x - not_own.to(x.dtype)
                for kind, value in _read_nodes(op.readout, own_x, x if x_in is None else x_in,
                                               dictionary):
                    saved.append((kind, site, value.save()))
            if site == last:
                tracer.stop()  # nothing later is needed: skip the remaining layers
            if op.freeze is not None:
                x = _as_activation(op.freeze, x)
                if carried is not None:  # a held site still gets the ablated node's writes
                    x = x + carried
                resolved.write(model, x)
            if site in reads:  # a transcoder reads this dictionary site: its final value
                inputs[site] = x
        if output_targets:
            logits = model.output.logits
            for index, target in output_targets:
                target_values.append((index, target.output_values(
                    logits, copies, positions=logit_positions).save()))
    for kind, site, value in saved:
        {"activation": result.activations, "input": result.inputs,
         "features": result.features, "errors": result.errors, "own": result.own,
         "full_features": result.full_features,
         "full_errors": result.full_errors}[kind][site] = value
    result.targets = torch.full((rows, len(targets)), float("nan"), device=model_device(model))
    for index, value in target_values:
        result.targets[:, index] = value
    return result


def tile_site(site: str | None) -> str | None:
    """Where copies that differ only from ``site`` on can be tiled (``tile_at``): ``site``
    itself when it holds the model's whole state (``embed``, ``resid_in.L``,
    ``resid_out.L``), else the input of its block, ``resid_in.L``; ``None`` (no tiling) for
    ``None`` and for a site named by its module path."""
    if site is None:
        return None
    parsed = Site.parse(site)
    if parsed.module_path is not None:
        return None
    if parsed.kind in ("embed", "resid_in", "resid_out"):
        return site
    return f"resid_in.{parsed.layer}"


def _logit_positions(model, output_targets: Sequence[ResolvedTarget], width: int
                     ) -> list[int] | None:
    """The sorted positions any output target reads, when they are fewer than ``width`` and
    the model's forward takes Hugging Face's ``logits_to_keep`` (then the logits of a pass
    are ``[R, len(positions), vocab]``: the unembedding, which for a 50k vocabulary costs
    more than a small model's layers, runs on those positions only); else ``None``."""
    if not output_targets:
        return None
    used = sorted({int(p) for t in output_targets
                   for p in torch.nonzero(t.weights.any(0)).flatten().tolist()})
    if len(used) >= width:
        return None
    return used if forward_accepts(model, "logits_to_keep") else None


def _in_dtype(patch_err: dict, dtype) -> dict:
    """``patch_error`` arguments with floating tensors in ``dtype`` (masks in the
    activation's dtype, so that a bf16 model gets bf16 back)."""
    return {key: value.to(dtype) if torch.is_tensor(value) and value.is_floating_point()
            else value for key, value in patch_err.items()}


def _without_patches(op: SiteOps) -> SiteOps:
    """``op`` with its feature and error patches done."""
    return replace(op, patch=None, patch_err=None)


def _as_activation(value: torch.Tensor, activation) -> torch.Tensor:
    """``value`` on the device and in the dtype of the model's ``activation`` (a no-op in
    float32 on one device; differentiable, so gradients still reach a float32 delta)."""
    return value.to(device=activation.device, dtype=activation.dtype)


def _not_own(edit, carried, earlier):
    """The part of a site's activation that is not its own dictionary's reconstruction
    plus error: this pass's edit there, edits carried there, earlier cross-layer layers'
    writes (``SiteOps.earlier``); ``None`` when there is none."""
    parts = [part for part in (edit, carried, earlier) if part is not None]
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total + part.to(total.dtype)
    return total


def _read_nodes(readout: NodeRead, x, x_in, dictionary: Dictionary):
    """Inside a trace: node values at a site as ``(kind, tensor)`` pairs; ``x`` is the
    site's activation and ``x_in`` the one features are encoded from (``x`` but for a
    transcoder).

    Every feature ``[R, T, F]`` and the error are computed only for the error node and
    ``full``; feature ids read just their columns (which for a separable dictionary never
    builds the ``[R, T, F]`` tensor), and per-row readouts (``own_feature``) encode each
    row's own feature, with encode/decode only for the rows that read the error node."""
    features = error = None
    if readout.error or readout.full:
        features = dictionary.encode(x_in)
        error = x - dictionary.decode(features)
    out = []
    if readout.full:
        out.append(("full_features", features))
        out.append(("full_errors", error))
    if readout.feature_ids is not None:
        values = (dictionary.encode_features(x_in, readout.feature_ids) if features is None
                  else features[..., readout.feature_ids])
        if readout.weights is not None:
            values = (values * readout.weights[..., None]).sum(1)
        out.append(("features", values))
    if readout.own_feature is not None:
        out.append(("own", _own_values(readout, x, x_in, dictionary, features, error)))
    elif readout.error:
        values = (error * readout.error_vector).sum(-1)
        if readout.weights is not None:
            values = (values * readout.weights).sum(-1)
        out.append(("errors", values))
    return out


def _own_values(readout: NodeRead, x, x_in, dictionary: Dictionary, features, error):
    """Inside a trace: ``[R]`` each row's own node value, ``Σ_t w_t v_t`` with ``v`` its
    feature's activation or its error-node value ``e · g`` (``features`` / ``error``: the
    dense ones when already computed, else ``None``)."""
    own = readout.own_feature
    is_feature = (own >= 0)[:, None]
    if features is not None:
        index = own.clamp(min=0)[:, None, None].expand(-1, features.shape[1], 1)
        feature_values = torch.gather(features, -1, index).squeeze(-1)          # [R, T]
        error_values = (torch.zeros_like(feature_values) if readout.error_vector is None
                        else (error * readout.error_vector).sum(-1))
    else:
        feature_values = dictionary.encode_rows(x_in, own.clamp(min=0))           # [R, T]
        error_values = torch.zeros_like(feature_values)
        rows = torch.nonzero(own < 0).squeeze(-1)
        if readout.error_vector is not None and rows.numel():
            # only the rows whose own node is the error node encode everything
            row_values = _error_values(dictionary, x[rows], x_in[rows],
                                       readout.error_vector[rows])
            error_values = error_values.to(row_values.dtype).index_copy(0, rows, row_values)
    values = torch.where(is_feature, feature_values, error_values)
    return (values * readout.own_weights).sum(-1)


def _error_values(dictionary: Dictionary, x, x_in, g) -> torch.Tensor:
    """``[R, T]`` error-node values ``e · g`` with ``e = x − decode(encode(x_in))``, for
    ``x, x_in, g [R, T, d]``. An affine decoder ``c @ D + b`` gives ``x·g − c·(g Dᵀ) − b·g``:
    the reconstruction is never built, so the value and its gradient cost three
    ``[R·T, d] × [d, F]`` products instead of four (encode, decode and their backward)."""
    features = dictionary.encode(x_in)
    if type(dictionary).decode is not Dictionary.decode:   # e.g. a decoder scale s(x)
        return ((x - dictionary.decode(features, x)) * g).sum(-1)
    g = g.to(features.dtype)
    along = g @ dictionary.directions.T                       # [R, T, F], no gradient
    return ((x * g).sum(-1) - (features * along).sum(-1)
            - g @ dictionary.decoder_bias.to(g.dtype))
