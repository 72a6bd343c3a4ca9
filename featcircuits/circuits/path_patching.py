"""Edge-set evaluation (the exact path patching of ``circuits.faithfulness``) without dense
``[n, T, n_features]`` tensors.

``faithfulness.evaluate_edge_specs`` assembles each site's node values level by level: a
node keeps its own value, nodes outside the set take their source, and a node missing an
incoming edge is read from a copy of the run in which that edge's upstream nodes are at
their source. Here a site's assembled state is kept as what later passes need, not as every
feature:

* ``activation [n, T, d]`` — ``decode(assembled features) + assembled error``, the value
  written at the site in later passes;
* ``error [n, T, d]`` — the assembled error term (an absent edge from the error node sets
  it to its source);
* ``values [n, T, k]`` at ``columns [k]`` — the assembled features that some absent edge
  sets to their source (the only features a later pass changes).

Because ``decode`` is linear, the assembled activation follows from the base copy's
activation ``x`` (``= decode(c) + e`` of its own features ``c`` and error ``e``) and the
few features whose assembled value differs from ``c``:

    decode(a) + e_a = x − Σ_{f not kept} (c_f − s_f) d_f + (e_a − e)     (most features kept)
                    = decode(s) + Σ_{f kept} (c_f − s_f) d_f + e_a          (most not kept)

with ``s`` the source features and ``d_f`` the decoder directions; both sums run over the
columns kept at some but not every cell, each encoded alone (``encode_features``). The
full encode/decode of a copy runs only where an error term is needed: a kept error next to
mostly ablated features, an ablated error next to mostly kept ones, and copies whose own
node is an error node. Copies save their activation at the level; their own node's value
is encoded from it after the pass.

Used for runs without cross-layer transcoders (whose later sites also receive the assembled
features' writes: ``faithfulness`` keeps the dense assembly there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from featcircuits.engine.cache import select_features
from featcircuits.engine.circuit_trace import SiteOps
from featcircuits.engine.memory import bytes_per_row, model_shape
from featcircuits.engine.runs import ERROR, CircuitRuns, direct_sites

__all__ = ["dense_mask", "evaluate_edge_specs_sparse", "mask_any", "sparse_possible"]


def dense_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An ``EdgeSpec.ablated_into`` mask ``[T, F + 1]`` as a dense bool tensor (``edge_spec``
    stores them sparse: a circuit has one per node and site, almost all False)."""
    if mask is None or not mask.is_sparse:
        return mask
    return mask.to_dense()


def mask_any(mask: torch.Tensor) -> bool:
    """Whether an ``EdgeSpec.ablated_into`` mask (dense or sparse) has a True cell, without
    making a sparse one dense (a ``[T, F + 1]`` tensor per call: ~0.6 ms at 32,768
    features, and edge faithfulness asks it for every node and site)."""
    return bool(mask.coalesce().values().any()) if mask.is_sparse else bool(mask.any())


def _mask_columns(mask: torch.Tensor) -> torch.Tensor:
    """``[F + 1]`` bool: the columns of ``mask`` with a True cell (sparse stays sparse)."""
    if not mask.is_sparse:
        return mask.any(0)
    mask = mask.coalesce()
    hit = torch.zeros(mask.shape[1], dtype=torch.bool, device=mask.device)
    hit[mask.indices()[1][mask.values()]] = True
    return hit


@dataclass
class _Assembled:
    """One spec's assembled state at one site (see the module docstring)."""

    activation: torch.Tensor     # [n, T, d]
    error: torch.Tensor | None   # [n, T, d]; None where no pass reads it
    columns: torch.Tensor        # [k] long, sorted
    values: torch.Tensor         # [n, T, k]


def sparse_possible(runs: CircuitRuns) -> bool:
    """Whether ``evaluate_edge_specs_sparse`` evaluates these runs (no cross-layer
    transcoder among the dictionaries)."""
    return not runs.earlier and not any(d.later_writes for d in runs.dictionaries.values())


def evaluate_edge_specs_sparse(runs: CircuitRuns, specs: Sequence, *, ablation: str,
                               levels: Sequence[str | None], sites: Sequence[str],
                               level_of, progress) -> torch.Tensor:
    """``[len(specs), n_targets]`` mean target values of each edge spec (``EdgeSpec``),
    levels in order (``progress`` wraps them); as ``faithfulness.evaluate_edge_specs``."""
    source_features, source_errors = runs.sources(ablation)
    assembled: list[dict[str, _Assembled]] = [{} for _ in specs]
    decoded_source: dict[str, torch.Tensor] = {}
    target_values = torch.zeros(len(specs), len(runs.targets), device=runs.device)
    for level in progress(levels):
        earlier = direct_sites(sites, runs.read_depth(level), runs.dictionaries)
        copies: list[tuple[int, object]] = []  # (spec index, None = base | node | target)
        for index, spec in enumerate(specs):
            copies.append((index, None))
            for key, masks in spec.ablated_into.items():
                if level_of(runs, key) == level and any(
                        mask_any(masks[s]) for s in earlier if s in masks):
                    copies.append((index, key))
        read_site = level if level in sites else None
        readings = _run_copies(runs, copies, specs, earlier, read_site, assembled,
                               source_features, source_errors, outputs=level is None)
        own = dict(zip(copies, readings))
        if read_site is not None:
            ablated = _ablated_columns(runs, specs, read_site)
            for index, spec in enumerate(specs):
                overrides = [(key, reading) for (i, key), reading in own.items()
                             if i == index and key is not None and not isinstance(key, int)]
                assembled[index][read_site] = _assemble(
                    runs, read_site, spec.kept[read_site].to(runs.device), own[(index, None)],
                    overrides, ablated, source_features, source_errors, ablation,
                    decoded_source)
        for index in range(len(specs)):
            for t in range(len(runs.targets)):
                if level_of(runs, t) == level:
                    reading = own.get((index, t), own[(index, None)])
                    target_values[index, t] = reading["targets"][:, t].mean()
    return target_values


def _ablated_columns(runs: CircuitRuns, specs: Sequence, site: str
                     ) -> tuple[torch.Tensor, bool]:
    """``([k] sorted features, error)`` of ``site`` that an absent edge of some spec sets
    to its source (their assembled values are kept), and whether one sets the error."""
    hit = torch.zeros(runs.dictionaries[site].n_features + 1, dtype=torch.bool, device="cpu")
    for spec in specs:
        for masks in spec.ablated_into.values():
            if site in masks:
                hit |= _mask_columns(masks[site]).cpu()
    return torch.nonzero(hit[:-1]).flatten().to(runs.device), bool(hit[-1])


def _error_of(runs: CircuitRuns, site: str, x: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
    """``[p, T, d]`` ``x − decode(encode(x_in))``, encoded a few prompts at a time: the
    ``[step, T, n_features]`` temporaries take a quarter of the scan budget (the level's
    assembled states and copies are alive beside them; at Pythia scale this encode set
    edge faithfulness' peak)."""
    dictionary = runs.dictionaries[site]
    step = max(1, runs.scan_budget // max(1, 4 * 4 * 3 * runs.width * dictionary.n_features))
    parts = [x[p:p + step] - dictionary.decode(dictionary.encode(x_in[p:p + step]))
             for p in range(0, x.shape[0], step)]
    return torch.cat(parts)


def _assemble(runs: CircuitRuns, site: str, kept: torch.Tensor, base: dict, overrides,
              ablated: tuple[torch.Tensor, bool], source_features, source_errors,
              ablation: str, decoded_source: dict) -> _Assembled:
    """A spec's assembled state at ``site`` from its base copy's reading and the readings of
    copies of its nodes there that miss an incoming edge (``kept [T, F + 1]``; ``ablated``:
    ``_ablated_columns`` of the site; ``decoded_source``: ``{site: decode(s)}``, filled
    once)."""
    dictionary = runs.dictionaries[site]
    device = runs.device
    columns, error_ablated = ablated
    x, x_in = base["x"], base["x_in"]
    kept_f, kept_e = kept[:, :-1], kept[:, -1]                    # [T, F], [T]
    every = kept_f.all(0)
    mostly_kept = int(every.sum()) * 2 >= dictionary.n_features
    # features whose assembled value is not what ``x`` (mostly kept) / decode(s) holds
    moved = torch.nonzero(~every if mostly_kept else kept_f.any(0)).flatten()
    feature_overrides = [key[1] for key, _ in overrides if key[1] != ERROR]
    wanted = torch.unique(torch.cat([moved, columns, torch.tensor(
        feature_overrides, dtype=torch.long, device=device)]))
    slot = {f: k for k, f in enumerate(wanted.tolist())}
    base_values = dictionary.encode_features(x_in, wanted)            # [n, T, w]
    source_values = select_features(source_features, site, feature_ids=wanted).expand_as(
        base_values)
    values = torch.where(kept_f[:, wanted][None], base_values, source_values)
    pick = torch.tensor([slot[f] for f in moved.tolist()], dtype=torch.long, device=device)
    difference = base_values[..., pick] - source_values[..., pick]   # [n, T, m]
    directions = dictionary.directions[moved].to(x.dtype)           # [m, d]
    source_error = source_errors[site].expand_as(x)
    keep_e = kept_e[None, :, None]
    # the base copy's error is needed where the assembled error keeps it: next to mostly
    # ablated features only at kept error cells; next to mostly kept features also to
    # remove it at ablated cells, or when a later pass or an override reads the error
    if mostly_kept:
        needs_error = (not bool(kept_e.all()) or error_ablated
                       or any(key[1] == ERROR for key, _ in overrides))
    else:
        needs_error = bool(kept_e.any())
    base_error = _error_of(runs, site, x, x_in) if needs_error else None
    error = None if base_error is None else torch.where(keep_e, base_error, source_error)
    if mostly_kept:   # x − Σ_{not kept} (c − s) d + (e_a − e)
        activation = x - (difference * (~kept_f[:, moved]).to(x.dtype)) @ directions
        if error is not None:
            activation = activation + (error - base_error)
    else:             # decode(s) + Σ_{kept} (c − s) d + e_a
        if error is None:   # no kept error cell
            error = source_error
        if site not in decoded_source:
            decoded_source[site] = runs.source_activation(site, ablation) - source_error
        activation = (decoded_source[site]
                      + (difference * kept_f[:, moved].to(x.dtype)) @ directions + error)
    for (_, f, position), reading in overrides:
        where = slice(None) if position is None else slice(position, position + 1)
        if f == ERROR:
            if bool(kept_e[where].all()):
                own_error = reading["own"]                                  # [n, t, d]
                activation[:, where] += own_error - error[:, where]
                error = error.clone()
                error[:, where] = own_error
            continue
        if not bool(kept_f[where, f].all()):
            continue
        own_value = reading["own"]                                          # [n, t]
        change = own_value - values[:, where, slot[f]]
        activation[:, where] += change[..., None] * dictionary.directions[f].to(x.dtype)
        values[:, where, slot[f]] = own_value
    keep = torch.tensor([slot[f] for f in columns.tolist()], dtype=torch.long, device=device)
    return _Assembled(activation, error, columns, values[..., keep])


def _run_copies(runs: CircuitRuns, copies, specs, earlier, read_site, assembled,
                source_features, source_errors, outputs: bool) -> list[dict]:
    """Forward passes for ``copies``: each returns the target values and (when
    ``read_site`` is given) the activation there and its dictionary's input, ``[n, ...]``."""
    n = runs.n
    readings: list[dict] = []
    vocab = model_shape(runs.model)["vocab"] if outputs else 0
    d_model = max(d.d_model for d in runs.dictionaries.values())
    per_copy = n * bytes_per_row(runs.width, vocab=vocab, features=(), d_models=[d_model])
    per_chunk = max(1, min(runs.max_rows // n, runs.max_memory // max(1, per_copy)))
    for start in range(0, len(copies), per_chunk):
        chunk = copies[start:start + per_chunk]
        ops = {}
        for site in earlier:
            dictionary = runs.dictionaries[site]
            written = []
            for index, key in chunk:
                state = assembled[index][site]
                activation = state.activation
                masks = specs[index].ablated_into.get(key) if key is not None else None
                ablate = None if masks is None else dense_mask(masks.get(site))
                if ablate is not None and ablate.any():
                    ablate = ablate.to(runs.device)
                    columns = torch.nonzero(ablate[:, :-1].any(0)).flatten()
                    if len(columns):
                        at = torch.searchsorted(state.columns, columns)
                        change = (select_features(source_features, site, feature_ids=columns)
                                  - state.values[..., at]) * ablate[None, :, columns]
                        activation = activation + change @ dictionary.directions[columns].to(
                            activation.dtype)
                    if ablate[:, -1].any():
                        activation = activation + (source_errors[site] - state.error) * ablate[
                            None, :, -1:]
                written.append(activation)
            ops[site] = SiteOps(overwrite=torch.cat(written))
        if read_site is not None:
            ops[read_site] = SiteOps(save_activation=True)
        with torch.no_grad():
            result = runs.trace(ops, len(chunk),
                                tile_at=runs.copies_tile(earlier[0] if earlier else None),
                                outputs=outputs)
        for k, (_, key) in enumerate(chunk):
            rows = slice(k * n, (k + 1) * n)
            reading = {"targets": result.targets[rows]}
            if read_site is not None:
                x = result.activations[read_site][rows]
                x_in = result.inputs.get(read_site)
                x_in = x if x_in is None else x_in[rows]
                if key is None:   # the base copy: its own tensors, not views of the chunk's
                    reading["x"] = x.clone()
                    reading["x_in"] = reading["x"] if x_in is x else x_in.clone()
                elif not isinstance(key, int):   # a node's copy: only its own value
                    reading["own"] = _own_value(runs, read_site, key, x, x_in)
            readings.append(reading)
    return readings


def _own_value(runs: CircuitRuns, site: str, node, x: torch.Tensor, x_in: torch.Tensor
               ) -> torch.Tensor:
    """The value of ``node`` (a feature ``[n, t]`` or the error term ``[n, t, d]``, ``t``
    its positions) in a copy whose activation at ``site`` is ``x`` (input ``x_in``): all a
    node's copy keeps, so that a level's readings do not hold ``[n, T, d]`` per copy."""
    _, f, position = node
    where = slice(None) if position is None else slice(position, position + 1)
    if f == ERROR:
        return _error_of(runs, site, x[:, where], x_in[:, where])
    return runs.dictionaries[site].encode_features(
        x_in[:, where], torch.tensor([f], device=x.device))[..., 0]
