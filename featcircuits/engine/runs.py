"""The cached clean run that circuit discovery works on.

``CircuitRuns`` holds, for one data set (token ids or prompt pairs), the clean activations
and dictionary errors at every dictionary site, the targets' values and their gradient with
respect to every site (one forward and one backward pass), and the ablation sources
(``zero``, ``mean``, ``position_mean``, ``resample``, ``corrupt``) computed on demand.
Feature activations ``[n, T, n_features]`` are never kept: they are encoded when read, in
blocks (``engine.run_features``, ``docs/memory.md``).

``CircuitRuns.trace`` runs many edited copies of the data in one forward pass
(``featcircuits.engine.circuit_trace.trace_rows``).

Node values (what an edge's weight is a change of):

* feature ``f`` at a site: ``Σ_t w_t c_f,t`` with ``w`` the real-token mask divided by
  the prompt's length (``node_reduce="mean"``, the default) or not (``"sum"``); per
  position ``t`` in positional graphs; ``c = encode(x)``;
* error node: ``Σ_t w_t (e_t · g_t)`` with ``e = x − decode(encode(x))`` and ``g`` the
  gradient of the summed targets w.r.t. the site on the clean run — the error's first-order
  contribution to the targets (an error vector has no scalar activation of its own);
* a target: its value (see ``featcircuits.circuits.targets``).
All are averaged over prompts.

Every dictionary is READ (encoded) at its ``input_site`` and WRITTEN (decoded; edits, error
term, freezing, gradients) at its ``site``. The two differ for a transcoder (e.g.
``mlp_in.L`` → ``mlp_out.L``): its features are ``c = encode(x_in)`` with ``x_in`` the
activation at the input site of the same (edited) run, and its error node is
``e = x − decode(c)`` at the output site — which includes a skip connection's
``x_in @ W_skip.T`` (the skip is not a node of its own, and ablating every node of the site
still gives the source activation ``decode(c_source) + e_source``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.io import check_dictionary_fits
from featcircuits.engine.cache import SiteFeatures, feature_blocks
from featcircuits.engine.carried import (
    check_cross_layer_sites,
    earlier_writes,
    with_earlier_writes,
)
from featcircuits.engine.circuit_trace import (
    SiteOps,
    TraceResult,
    repeat_rows,
    tile_site,
    trace_rows,
)
from featcircuits.engine.edits import (
    check_finite_activations,
    input_site_of,
    refuse_decoder_scale,
)
from featcircuits.engine.memory import (
    FLOAT_BYTES,
    STREAM_SHARE,
    FreedMemory,
    bytes_per_row,
    rows_per_chunk,
)
from featcircuits.engine.run_features import (
    active_cells,
    compute_sources,
    decoded,
    encoder,
    feature_scales,
)
from featcircuits.engine.run_inputs import check_dictionary_placement, read_inputs
from featcircuits.engine.settings import RunSettings
from featcircuits.engine.sources import ABLATIONS, check_source
from featcircuits.engine.tiling import PrefixTiling
from featcircuits.errors import ParameterError
from featcircuits.model.loading import model_device
from featcircuits.model.sites import Site, num_layers

if TYPE_CHECKING:  # circuits builds on the engine: import its targets only where they are used
    from featcircuits.circuits.targets import ResolvedTarget, Target

__all__ = ["ABLATIONS", "ERROR", "FULL_STATE_KINDS", "CircuitRuns", "check_dictionary_placement",
           "direct_sites", "read_inputs"]

ERROR = -1  # feature index of a site's error node


FULL_STATE_KINDS = ("embed", "resid_in", "resid_out")


def direct_sites(sites: Sequence[str], depth: float,
                 dictionaries: Mapping[str, Dictionary] | None = None) -> list[str]:
    """The sites (of ``sites``) before ``depth`` that can have a *direct* effect there.

    ``embed``, ``resid_in.L`` and ``resid_out.L`` hold the model's whole state at their
    point, so once one of them is held fixed nothing earlier can reach ``depth`` directly:
    the result starts at the last such site before ``depth`` — except that, given
    ``dictionaries``, an earlier cross-layer transcoder site whose features also write a
    site in that range still reaches ``depth`` through that write (it is kept, in order)."""
    before = [s for s in sites if Site.parse(s).depth < depth]
    start = 0
    for index, site in enumerate(before):
        parsed = Site.parse(site)
        if parsed.module_path is None and parsed.kind in FULL_STATE_KINDS:
            start = index
    kept = set(before[start:])
    carried = [s for s in before[:start] if dictionaries is not None
               and kept & set(dictionaries[s].later_writes)]
    return carried + before[start:]


class CircuitRuns:
    """Clean run, dictionaries, targets and ablation sources of one data set.

    Args:
        model: nnsight ``LanguageModel``.
        dictionaries: ``{site: Dictionary}`` (sorted by ``Site.depth`` here).
        inputs: prompt pairs, texts, or token ids (see ``read_inputs``).
        targets: one target or a list (``featcircuits.circuits.targets``); the circuit
            explains their sum.
        node_reduce: a (non-positional) node's value is the ``mean`` (default) or ``sum`` of
            its activation over each prompt's real tokens, averaged over prompts.
        settings: ``engine.settings.RunSettings``: ``max_rows`` (most sequences per forward
            pass, default 256), ``max_memory`` (budget for the working tensors of one
            forward pass: fewer copies of the data run at once when ``[rows, positions,
            n_features]`` tensors would exceed it, see ``docs/memory.md``; the cached clean
            run is not counted; scans that encode a whole site's features take blocks of
            ``max_memory // STREAM_SHARE``), ``seed`` (``resample`` ablation) and
            ``progress``.

    Attributes:
        ids: token ids ``[n, T]``.
        lengths: real tokens per prompt ``[n]``.
        token_mask: ``[n, T]`` (float), 1 on real tokens.
        pairs: the prompt pairs, or ``None`` for plain texts.
        activations: ``{site: [n, T, d]}`` of the clean run.
        input_sites: ``{site: input site}``: where each dictionary reads (encodes); differs
            from the site for transcoders.
        input_activations: ``{site: [n, T, d]}`` of the clean run at each dictionary's
            input site (the same tensor as ``activations[site]`` when they coincide).
        features: ``{site: [n, T, F]}`` of the clean run, ``encode(input_activations)``:
            an ``engine.cache.SiteFeatures`` that encodes when read (``features[site]``
            encodes the whole site, ``features.select(site, prompts, feature_ids)`` a block).
        errors: ``{site: [n, T, d]}`` reconstruction errors of the clean run.
        target_values: ``[n, n_targets]``.
        gradients: ``{site: [n, T, d]}`` of the summed targets, per prompt.
        rows_run: sequences run so far (a cost counter).
        attributions: node attributions computed so far (``circuits.attribution.
            node_attributions``), ``{(site, ablation, positional, method, steps, errors):
            [candidate nodes] values}``: reused by later circuits on these runs.
        tiling: the ``engine.tiling.PrefixTiling`` of the traced passes (``tiling.possible``
            turns ``False`` for good after a tiling mismatch).
        freed: the ``engine.memory.FreedMemory`` that passes call before they run (trims
            freed memory once the process grew by ``max_memory // 16``).
    """

    def __init__(self, model, dictionaries: Mapping[str, Dictionary], inputs, *,
                 targets: Target | str | int | Sequence, node_reduce: str = "mean",
                 settings: RunSettings | None = None) -> None:
        if isinstance(dictionaries, Dictionary):
            dictionaries = {dictionaries.site: dictionaries}
        if not dictionaries:
            raise ParameterError("no dictionaries given", hint="pass {site: dictionary}")
        if settings is None:
            settings = RunSettings()
        elif not isinstance(settings, RunSettings):
            raise ParameterError(f"settings must be a RunSettings, got {type(settings).__name__}",
                                 hint="e.g. settings=RunSettings(max_memory='2GB')")
        if node_reduce not in ("sum", "mean"):
            raise ParameterError(f"node_reduce must be 'sum' or 'mean', got {node_reduce!r}")
        self.node_reduce = node_reduce
        self.model = model
        self.dictionaries = {str(Site.parse(site)): d for site, d in dictionaries.items()}
        self.sites = sorted(self.dictionaries, key=lambda name: Site.parse(name).depth)
        self.input_sites = {site: str(input_site_of(d, site))
                            for site, d in self.dictionaries.items()}
        check_cross_layer_sites(self.dictionaries)  # a CLT's written sites all have nodes
        for site, dictionary in self.dictionaries.items():
            refuse_decoder_scale(dictionary, site, what="circuit discovery")
            check_dictionary_placement(dictionary, model, site)
            check_dictionary_fits(dictionary, model, site)
        ids, lengths, pairs = read_inputs(model, inputs)
        # every tensor computed with lives on the model's device (docs/devices.md)
        self.device = model_device(model)
        self.ids, self.lengths = ids.to(self.device), lengths.to(self.device)
        self.pairs = None if pairs is None else pairs.to(self.device)
        self.n, self.width = self.ids.shape
        positions = torch.arange(self.width, device=self.device)
        self.token_mask = (positions[None, :] < self.lengths[:, None]).float()
        from featcircuits.circuits.targets import resolve_target

        if isinstance(targets, (str, int)) or not isinstance(targets, Sequence):
            targets = [targets]
        if not targets:
            raise ParameterError("no targets given", hint="pass e.g. targets='logit_diff'")
        self.targets: list[ResolvedTarget] = [
            resolve_target(t, tokenizer=getattr(model.tokenizer, "tokenizer", model.tokenizer),
                           lengths=self.lengths, width=self.width, pairs=self.pairs,
                           sites=self.sites, dictionaries=self.dictionaries) for t in targets]
        names = [t.node_id for t in self.targets]
        if len(set(names)) != len(names):
            raise ParameterError(f"targets {names} name the same node twice")
        self.settings = settings
        self.max_rows = settings.rows(256)
        self.max_memory = settings.max_memory
        # passes hand freed memory back once the process grew by 1/16 of the budget
        self.freed = FreedMemory(self.max_memory // 16)
        self.seed = settings.seed
        self.progress = settings.progress
        self.n_layers = num_layers(model)
        self.rows_run = 0
        self.tiling = PrefixTiling(model)
        self._scales: dict = {}
        self._feature_scales: dict[tuple[str, bool], torch.Tensor] = {}
        self._active: dict[tuple[str, str, bool], torch.Tensor] = {}
        # node attributions already computed: {(site, ablation, positional, method, steps,
        # errors): [candidate nodes] values}, read by circuits.attribution.node_attributions
        self.attributions: dict[tuple, torch.Tensor] = {}
        self._sources: dict[str, tuple[SiteFeatures, dict]] = {}
        self._kept: dict[str, list[torch.Tensor]] = {}
        # {site: [n, T, d]} what earlier cross-layer transcoder layers write at a CLT site on
        # the clean run (engine.carried); empty without CLTs
        self.earlier: dict[str, torch.Tensor] = {}
        self._clean_run()

    # ------------------------------------------------------------------ basics
    def site_layer(self, site: str | None) -> int:
        """Graph ``layer`` of a site: its block index, -1 for embed and pos_embed, n_layers
        for outputs."""
        if site is None:
            return self.n_layers
        parsed = Site.parse(site)
        if parsed.kind in ("embed", "pos_embed"):
            return -1
        return int(parsed.layer if parsed.layer is not None else self.n_layers)

    def depth(self, site: str) -> float:
        return Site.parse(site).depth

    def read_depth(self, site: str | None) -> float:
        """Depth where the dictionary at ``site`` reads its input (its ``input_site``): only
        sites before it can change its features. ``None`` (the outputs): infinity."""
        if site is None:
            return float("inf")
        return Site.parse(self.input_sites[site]).depth

    @property
    def max_target_depth(self) -> float:
        return max(float("inf") if t.is_output else self.depth(t.site) for t in self.targets)

    def chunk_copies(self, every_site: bool = False) -> int:
        """How many copies of the data fit in one forward pass (``max_rows`` and
        ``max_memory``; at least one). ``every_site``: the pass patches every site at
        once (faithfulness), so each site's feature tensors count."""
        rows = min(self.max_rows,
                   rows_per_chunk(self.max_memory, self.bytes_per_row(every_site)))
        return max(1, rows // self.n)

    def bytes_per_row(self, every_site: bool = False) -> int:
        """Estimated working memory of one sequence in a traced pass: full-sequence logits,
        the model's activations, and three ``[T, F]`` feature tensors of the widest
        dictionary (encoded features, their gradient or ablation edit, a temporary) — or
        four of every dictionary when ``every_site`` (sources, masks, features, edit)."""
        config = getattr(getattr(self.model, "_module", self.model), "config", None)
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        widths = [d.n_features for d in self.dictionaries.values()]
        features = [(width, 4) for width in widths] if every_site else [(max(widths), 3)]
        # a cross-layer transcoder's edit carried to each later site, and the earlier
        # layers' writes held there: two [T, d_model] tensors each (engine.carried)
        features += [(d.d_model, 2) for d in self.dictionaries.values() for _ in d.later_writes]
        d_model = max(d.d_model for d in self.dictionaries.values())
        return bytes_per_row(self.width, vocab=vocab, features=features, d_models=[d_model])

    def feature_chunk(self, rows: int, temporaries: int = 4) -> int:
        """How many features of ``[rows, T, ·]`` float tensors (``temporaries`` of them) fit
        in ``max_memory`` (at least one)."""
        return rows_per_chunk(self.max_memory, FLOAT_BYTES * temporaries * rows * self.width)

    @property
    def scan_budget(self) -> int:
        """Bytes a scan over a whole site's features may take per block
        (``max_memory // STREAM_SHARE``, ``docs/memory.md``)."""
        return self.max_memory // STREAM_SHARE

    def feature_blocks(self, site: str, temporaries: int = 4):
        """``(prompt slice, feature ids or None)`` blocks covering ``[n, T, F]`` at ``site``
        with ``temporaries`` float32 tensors of a block within ``scan_budget``
        (``engine.cache.feature_blocks``)."""
        dictionary = self.dictionaries[site]
        return feature_blocks(self.n, self.width, dictionary.n_features,
                              separable=dictionary.separable, budget=self.scan_budget,
                              device=self.device, temporaries=temporaries)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors the runs keep: activations, input activations, errors,
        gradients, target values, the sources, active-feature tables, feature scales and
        node attributions computed so far (each storage once). Independent of ``n_features`` but for
        ``[F]`` and ``[T, F]`` tables per site (``mean`` / ``position_mean`` sources, active
        features, node scales)."""
        tensors = [*self.activations.values(), *self.input_activations.values(),
                   *self.errors.values(), *self.gradients.values(), self.target_values,
                   *self._feature_scales.values(), *self._active.values(),
                   *self.attributions.values(),
                   *(t for kept in self._kept.values() for t in kept)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in tensors}
        return sum(storages.values())

    def _clean_run(self) -> None:
        deltas = {site: torch.zeros(self.n, self.width, self.dictionaries[site].d_model,
                                    device=self.device, requires_grad=True)
                  for site in self.sites}
        ops = {site: SiteOps(delta=deltas[site], save_activation=True) for site in self.sites}
        with torch.enable_grad():
            result = self.trace(ops, copies=1)
            total = result.targets.sum()
            grads = torch.autograd.grad(total, [deltas[s] for s in self.sites],
                                        allow_unused=True)
        self.target_values = result.targets.detach()
        self.activations = {s: result.activations[s].detach() for s in self.sites}
        self.input_activations = {s: result.inputs[s].detach() if s in result.inputs
                                  else self.activations[s] for s in self.sites}
        for site, values in self.activations.items():
            check_finite_activations(values, site=site, run="clean", token_mask=self.token_mask)
            if self.input_sites[site] != site:
                check_finite_activations(self.input_activations[site],
                                         site=self.input_sites[site], run="clean",
                                         token_mask=self.token_mask)
        self.gradients = {s: (torch.zeros_like(deltas[s]) if g is None else g.detach())
                          for s, g in zip(self.sites, grads)}
        self.features = SiteFeatures(self.sites, encoder(self.dictionaries,
                                                         self.input_activations,
                                                         self.scan_budget))
        self.errors = {s: self.activations[s] - decoded(self, s, self.features)
                       for s in self.sites}
        # a CLT site's error also subtracts what earlier layers write there
        with torch.no_grad():
            for s in self.sites:
                earlier = earlier_writes(self.dictionaries, self.features, s)
                if earlier is not None:
                    self.earlier[s] = earlier
                    self.errors[s] = self.errors[s] - earlier

    @property
    def metric_value(self) -> float:
        """Mean over prompts of the summed targets on the clean run."""
        return float(self.target_values.sum(-1).mean())

    # ----------------------------------------------------------------- sources
    def sources(self, ablation: str) -> tuple[SiteFeatures, dict[str, torch.Tensor]]:
        """``({site: features [n, T, F]}, {site: errors [n, T, d]})`` an ablation puts in.

        ``zero``: zeros; ``mean``: the mean over the data's real tokens; ``position_mean``:
        the mean over the prompts at each position (for templated prompts whose positions
        line up; the overall mean where no prompt is that long); ``resample``: the clean
        values of another prompt of the same length; ``corrupt``: the corrupted prompts'
        values (prompt pairs only). The features are a ``SiteFeatures`` (encoded when read;
        ``engine.cache.select_features`` reads a block); what each ablation keeps is listed
        in ``engine.run_features``.
        """
        check_source(ablation, ABLATIONS, kind="ablation", where="circuit runs")
        if ablation not in self._sources:
            features, errors, kept = compute_sources(self, ablation)
            self._sources[ablation] = features, errors
            self._kept[ablation] = kept
        return self._sources[ablation]

    @torch.no_grad()
    def run_corrupt(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``({site: [n, T, d]} activations, {site: [n, T, d]} input activations)`` of the
        corrupted prompts (one forward pass; ``NonFiniteError`` on NaN/inf)."""
        ops = {site: SiteOps(save_activation=True) for site in self.sites}
        result = self.trace(ops, copies=1, ids=self.pairs.corrupt_ids)
        activations = {site: result.activations[site].detach() for site in self.sites}
        for site, values in activations.items():
            check_finite_activations(values, site=site, run="corrupt", token_mask=self.token_mask)
        inputs = {site: result.inputs[site].detach() if site in result.inputs
                  else activations[site] for site in self.sites}
        return activations, inputs

    def source_activation(self, site: str, ablation: str) -> torch.Tensor:
        """``[n, T, d]`` the activation with every feature and the error ablated (at a
        cross-layer transcoder site, earlier layers' clean writes there are kept)."""
        features, errors = self.sources(ablation)
        activation = decoded(self, site, features) + errors[site]
        return activation + self.earlier[site] if site in self.earlier else activation

    def active_features(self, site: str, ablation: str, positional: bool = False
                        ) -> list[int] | list[tuple[int, int]]:
        """Features whose source differs from their clean value at some real token:
        ids, or ``(feature, position)`` pairs when ``positional``. Ablating any other feature
        does nothing. One blockwise scan per site and ablation; the ``[F]`` (``[T, F]`` when
        ``positional``) bool table is kept."""
        key = (site, ablation, positional)
        if key not in self._active:  # [T, F] or [F] bool, one scan per site and ablation
            features, _ = self.sources(ablation)
            active = active_cells(self, site, features)
            self._active[key] = active if positional else active.any(0)
        if positional:  # (feature, position) pairs, by feature then position
            return [(f, p) for f, p in torch.nonzero(self._active[key].T).tolist()]
        return torch.nonzero(self._active[key]).flatten().tolist()

    def error_positions(self) -> list[int]:
        """Positions that are real in at least one prompt."""
        return list(range(int(self.lengths.max())))

    # ------------------------------------------------------------- node values
    def node_scale(self, key) -> float:
        """Typical magnitude of a node's value on the clean run: the prompt mean of
        ``Σ_t w_t |value_t|`` (per position when positional); for a target (its node id),
        the prompt mean of ``|target|``. The unit of relative thresholds."""
        if key not in self._scales:
            self._scales[key] = self._node_scale(key)
        return self._scales[key]

    def prepare_node_scales(self, nodes: Sequence) -> None:
        """Compute ``node_scale`` of many feature nodes at once: per site, only their
        features are encoded (a few columns) unless the site's whole table is cached or
        they are most of its features."""
        wanted: dict[tuple[str, bool], list] = {}   # (site, positional) → feature nodes
        for key in nodes:
            if isinstance(key, str) or key in self._scales or key[1] == ERROR:
                continue
            group = (key[0], key[2] is not None)
            if group not in self._feature_scales:
                wanted.setdefault(group, []).append(key)
        for (site, positional), keys in wanted.items():
            features = sorted({int(f) for _, f, _ in keys})
            dictionary = self.dictionaries[site]
            if not dictionary.separable or 4 * len(features) > dictionary.n_features:
                continue   # node_scale computes (and keeps) the whole table
            ids = torch.tensor(features, dtype=torch.long, device=self.device)
            table = feature_scales(self, site, positional, ids)           # [k] / [T, k]
            column = {f: k for k, f in enumerate(features)}
            for key in keys:
                _, f, position = key
                k = column[int(f)]
                self._scales[key] = float(table[k] if position is None else table[position, k])

    def _node_scale(self, key) -> float:
        if isinstance(key, str):
            index = [t.node_id for t in self.targets].index(key)
            return float(self.target_values[:, index].abs().mean())
        site, f, position = key
        if f != ERROR:  # every feature of the site at once ([F] or [T, F]), in blocks
            cached = (site, position is not None)
            if cached not in self._feature_scales:
                self._feature_scales[cached] = feature_scales(self, site, cached[1])
            scales = self._feature_scales[cached]
            return float(scales[f] if position is None else scales[position, f])
        values = (self.errors[site] * self.gradients[site]).sum(-1)
        if position is None:
            return float((values.abs() * self.node_weights).sum(1).mean())
        return float((values.abs() * self.token_mask)[:, position].mean())

    @property
    def node_weights(self) -> torch.Tensor:
        """``[n, T]`` how positions count in a (non-positional) node's value: the real-token
        mask for ``node_reduce="sum"``, divided by each prompt's length for ``"mean"``."""
        if self.node_reduce == "sum":
            return self.token_mask
        return self.token_mask / self.lengths[:, None].float()

    # ------------------------------------------------------------------ engine
    def copies_tile(self, site: str | None) -> str | None:
        """Where copies of the data that differ only from ``site`` on can be tiled
        (``trace(tile_at=)``): ``tile_site(site)``, or ``None`` when a feature target is read
        before ``site`` (every copy reads it there) or ``site`` is ``None``."""
        if site is None or any(not t.is_output and Site.parse(t.site).depth
                               < Site.parse(site).depth for t in self.targets):
            return None
        return tile_site(site)

    def trace(self, ops: Mapping[str, SiteOps], copies: int, *,
              ids: torch.Tensor | None = None, tile_at: str | None = None,
              outputs: bool = True) -> TraceResult:
        """Run ``copies`` copies of the data with ``ops`` applied; see ``trace_rows``.

        ``tile_at``: a site before which every copy is identical; the layers before it then
        run once on the ``n`` prompts and the activation is tiled there (falls back to full
        copies for architectures that build per-batch tensors before the first block).
        At a cross-layer transcoder site whose node values are read, the earlier layers are
        held at their clean writes (``SiteOps.earlier``, ``engine.carried``); on other
        ``ids`` (the corrupt run) nothing is filled in.
        """
        custom_ids = ids is not None
        ids = self.ids if ids is None else ids.to(self.device)
        self.rows_run += copies * self.n
        # what earlier passes freed goes back once it adds up: glibc keeps it fragmented,
        # and over the thousands of passes of a circuit at scale the resident set crept
        # 0.6 GiB above what was alive (docs/memory.md)
        self.freed.release()
        if self.earlier and not custom_ids:
            ops = with_earlier_writes(ops, self.earlier, copies)

        def untiled():
            return trace_rows(self.model, self.sites, self.dictionaries, ops,
                              repeat_rows(ids, copies), self.targets, copies, outputs=outputs)

        if tile_at is None or copies == 1:
            return untiled()
        return self.tiling.run(
            lambda: trace_rows(self.model, self.sites, self.dictionaries, ops, ids,
                               self.targets, copies, tile_at=tile_at, outputs=outputs),
            untiled, rows=copies * len(ids), batch=len(ids))
