"""Cross-layer transcoders in circuit runs: one node whose decoder writes several sites.

A cross-layer transcoder (CLT) layer ``L`` lives at node site ``mlp_out.L`` and also writes
every later output site ``mlp_out.L'`` (``dictionary.later_writes``). In circuit runs:

* **Ablating a node** ``(mlp_out.L, f)`` edits ``mlp_out.L`` and every later
  ``mlp_out.L'`` by ``(s − c) · W_dec[L → L']`` (``patch_site`` with ``carry``; the
  trace adds the carried edit when it reaches ``L'``). Reconstruction errors are kept.
* **Error nodes.** The error node of output site ``mlp_out.L'`` belongs to the dictionary
  of layer ``L'`` (the one whose node site it is)::

      e_L' = x_L' − Σ_{L ≤ L'} c_L @ W_dec[L → L'] − b_dec_L'

  so ``decode`` of layer ``L'`` plus :func:`earlier_writes` (what the layers before it
  write there) plus the error is the activation, and ablating every node of every layer
  up to ``L'`` gives the source activation there.
* **Held sites.** When a trace holds a CLT site at a value (ACDC's frozen sites) the
  carried edits of an ablated upstream node are added on top (its direct effect goes
  through every site it writes), and the error read there subtracts them together with the
  clean writes of the earlier layers (``SiteOps.earlier``, filled by ``CircuitRuns.trace``):
  the nodes of the held layers keep their clean values.
* **Many sites ablated at once** (faithfulness of a node set): an error patched at a CLT
  site is the error of the activation as this pass computed it, so it subtracts the
  earlier layers' *live* writes (encoded in the same pass before their own patches,
  :func:`live_writers`) and the edits carried there.
* **Gradients.** A node's attribution sums its decoder rows against the gradient at every
  site it writes: ``(c − s) · Σ_{L' ≥ L} g_L' · W_dec[L → L']``; an integrated-gradient
  path of ``mlp_out.L`` moves every site it writes (``circuits.carried_paths``).
* **Path patching** (edge-set faithfulness) assembles a CLT site from its own nodes plus
  the earlier layers' assembled writes (``circuits.faithfulness``).
* **Direct reach.** A CLT site before a held whole-state site still reaches later sites
  through its writes after it (``engine.runs.direct_sites`` given the dictionaries).

Every site a CLT layer writes must itself be a dictionary site of the runs (pass the whole
``CrossLayerTranscoder.dictionaries()``): :func:`check_cross_layer_sites`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import einops
import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import DictionaryError

__all__ = [
    "carried_sites",
    "check_cross_layer_sites",
    "earlier_writes",
    "live_writers",
    "live_writes",
    "with_earlier_writes",
    "writers_of",
    "written_sites",
]


def written_sites(dictionary: Dictionary, site: str) -> list[str]:
    """``[site, *later sites]``: every site the features of ``dictionary`` write."""
    return [site, *dictionary.later_writes]


def writers_of(dictionaries: Mapping[str, Dictionary], site: str) -> list[str]:
    """The other dictionary sites whose features also write ``site`` (earlier CLT layers)."""
    return [other for other, dictionary in dictionaries.items()
            if other != site and site in dictionary.later_writes]


def check_cross_layer_sites(dictionaries: Mapping[str, Dictionary]) -> None:
    """``DictionaryError`` unless every site a dictionary's features write is itself a
    dictionary site (else that site would have no error node to hold what its writers
    miss, and the carried edits would have no node to land on)."""
    for site, dictionary in dictionaries.items():
        missing = [later for later in dictionary.later_writes if later not in dictionaries]
        if missing:
            raise DictionaryError(
                f"{dictionary!r} at {site} also writes {missing}, which have no dictionary "
                "in these runs", hint="pass every layer of the cross-layer transcoder: "
                "CrossLayerTranscoder.dictionaries()")
        for later, directions in dictionary.later_writes.items():
            if directions.shape[-1] != dictionaries[later].d_model:
                raise DictionaryError(
                    f"{dictionary!r} writes {later} with width {directions.shape[-1]} but "
                    f"the dictionary there has d_model {dictionaries[later].d_model}",
                    hint="pass the layers of one cross-layer transcoder")


def earlier_writes(dictionaries: Mapping[str, Dictionary], features: Mapping[str, torch.Tensor],
                   site: str) -> torch.Tensor | None:
    """``[..., d]`` what the earlier layers' ``features`` write into ``site``:
    ``Σ_{w ∈ writers_of(site)} features[w] @ later_writes[site]`` (``None`` if no dictionary
    but the site's own writes there)."""
    total = None
    for writer in writers_of(dictionaries, site):
        values = features[writer]
        part = values @ dictionaries[writer].later_writes[site].to(values.dtype)
        total = part if total is None else total + part
    return total


def with_earlier_writes(ops: Mapping, earlier: Mapping[str, torch.Tensor], copies: int) -> dict:
    """``ops`` (``{site: SiteOps}``) with ``SiteOps.earlier`` set to ``earlier[site]``
    (``[n, T, d]``, repeated ``copies`` times: ``[(copies n), T, d]``) at every CLT site
    whose node values are read: readouts sit on held sites (ACDC) or measure direct
    effects (gradient edges), so the earlier layers count with their clean writes. An
    error patched without a readout uses the pass's live writes (``live_writers``)."""
    out = dict(ops)
    for site, op in ops.items():
        if site in earlier and op.earlier is None and op.readout is not None:
            held = einops.repeat(earlier[site], "n ... -> (k n) ...", k=copies)
            out[site] = dataclasses.replace(op, earlier=held)
    return out


def live_writers(dictionaries: Mapping[str, Dictionary], ops: Mapping) -> dict[str, list[str]]:
    """``{writer site: [later sites]}``: the earlier CLT layers whose *live* writes a pass
    needs, at the sites whose error is patched without ``SiteOps.earlier`` (the error of
    the activation as this pass computed it, e.g. when many sites are ablated at once)."""
    out: dict[str, list[str]] = {}
    for site, op in ops.items():
        if op.patch_err is not None and op.earlier is None:
            for writer in writers_of(dictionaries, site):
                out.setdefault(writer, []).append(site)
    return out


def live_writes(dictionary: Dictionary, x: torch.Tensor, site: str) -> torch.Tensor:
    """``[R, T, d]`` what ``dictionary``'s features, encoded from its input activation
    ``x`` in this pass (before any patch of its own), write into later ``site``."""
    features = dictionary.encode(x)
    return features @ dictionary.later_writes[site].to(features.dtype)


def carried_sites(dictionaries: Mapping[str, Dictionary], patched) -> set[str]:
    """The sites that patches at ``patched`` (site names) carry edits to."""
    return {later for site in patched for later in dictionaries[site].later_writes}
