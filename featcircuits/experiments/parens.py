"""The closing-parenthesis circuit of the bundled model (``parens_circuit``).

Held-out documents of the parenthesis grammar (``featcircuits.tasks.parens``) give the
positions where ")" is the one grammatical next token. The last-layer features that drive
")" are ranked two ways: by their decoder direction read through the final layer norm and
the unembedding (logit of ")" minus "." per unit of activation, with the layer norm's scale
taken at those positions), and by their activation on those positions versus the control
positions (nouns and ")" at depth 0). The features that score highest on ``activation ×
logit per unit`` become the targets, and the circuit is built back to the input tokens (a
``TokenBasis`` at the embedding) over every ")"-predicting position of the data.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pandas as pd
import torch

from featcircuits.circuits.targets import FeatureTarget
from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.engine.runs import CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import DictionaryLoadError, ParameterError
from featcircuits.experiments.circuits import (
    CircuitResult,
    build_circuit,
    evaluate_circuit,
)
from featcircuits.experiments.inputs import (
    ModelSpec,
    default_dictionaries,
    resolve_model,
    seeded,
)
from featcircuits.graph import check_tau
from featcircuits.model.loading import model_device, trace
from featcircuits.model.readout import logit_direction, readout
from featcircuits.model.sites import Site, num_layers
from featcircuits.writes import ensure_writable_dir

__all__ = [
    "ParensData",
    "parens_circuit",
    "parens_data",
    "parens_setup",
    "rank_parens_features",
    "unembedding_readout",
]


@dataclass
class ParensData:
    """Parenthesis documents as token ids with the positions that matter.

    Attributes:
        texts: the documents; ids ``[n, T]`` (BOS first, right-padded); lengths ``[n]``;
        closing ``[n, T]``: 1 where ")" is the grammatical next token;
        control ``[n, T]``: 1 at nouns and ")" at depth 0 (")" not grammatical).
    """

    texts: list[str]
    ids: torch.Tensor
    lengths: torch.Tensor
    closing: torch.Tensor
    control: torch.Tensor


def parens_data(model, n_texts: int = 12, *, seed: int = 0, min_closing: int = 1
                ) -> ParensData:
    """``n_texts`` held-out documents with at least ``min_closing`` ")"-predicting
    positions, tokenized for ``model``."""
    from featcircuits.tasks.parens import (
        closing_positions,
        generate_parens_texts,
        nonclosing_positions,
    )

    if n_texts < 1:
        raise ParameterError(f"n_texts must be >= 1, got {n_texts}")
    tokenizer = getattr(model.tokenizer, "tokenizer", model.tokenizer)
    texts, rows, closing, control = [], [], [], []
    drawn = generate_parens_texts(4 * n_texts + 8, seed=seed)
    for text in drawn:
        ids = tokenizer(text)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        where = closing_positions(tokens)
        if len(where) < min_closing:
            continue
        texts.append(text)
        rows.append(ids)
        closing.append(where)
        control.append(nonclosing_positions(tokens))
        if len(texts) == n_texts:
            break
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    closing_mask = torch.zeros(len(rows), width)
    control_mask = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        closing_mask[i, closing[i]] = 1.0
        control_mask[i, control[i]] = 1.0
    return ParensData(texts, ids, lengths, closing_mask, control_mask)


# ------------------------------------------------------------------ feature ranking
def unembedding_readout(model, activations: torch.Tensor, mask: torch.Tensor,
                        token: int, minus: int | None = None) -> torch.Tensor:
    """``[d_model]`` vector ``r`` such that adding ``a·v`` to the last residual stream at the
    masked positions raises ``logit[token] − logit[minus]`` by about ``a·(r·v)``.

    The final norm is linearised at those positions with its scale frozen at the mean
    standard deviation (RMS for RMSNorm) of the residual there:
    ``featcircuits.model.readout.Readout.residual_direction``. Computed in float32 on the
    unembedding's device.
    """
    ro = readout(model)
    x = activations[mask.to(activations.device).bool()]
    scale = ro.scale(x).mean()
    direction = logit_direction(ro.unembed.shape[0], token, minus, device=ro.unembed.device)
    return ro.residual_direction(direction, scale).to(activations.device)


def rank_parens_features(model, dictionary: Dictionary, activations: torch.Tensor,
                         data: ParensData, *, token: str = ")", minus: str = ".") -> pd.DataFrame:
    """Rank the features of ``dictionary`` (at the last layer) as drivers of ``token``.

    Columns: ``feature``, ``act_closing`` / ``act_control`` (mean activation at ")"
    positions / control positions), ``selectivity`` (their difference), ``logit_per_unit``
    (decoder direction through the final norm and unembedding: ``logit[token] −
    logit[minus]`` per unit of activation), ``contribution`` (``act_closing ×
    logit_per_unit``), sorted by contribution.
    """
    tokenizer = getattr(model.tokenizer, "tokenizer", model.tokenizer)
    token_id = tokenizer.convert_tokens_to_ids(token)
    minus_id = tokenizer.convert_tokens_to_ids(minus) if minus is not None else None
    with torch.no_grad():
        features = dictionary.encode(activations).float()  # float32 sums, on its device
        closing_mask = data.closing.to(features.device)
        control_mask = data.control.to(features.device)
        closing = (features * closing_mask[..., None]).sum((0, 1)) / closing_mask.sum()
        control = (features * control_mask[..., None]).sum((0, 1)) / control_mask.sum().clamp(
            min=1)
        readout = unembedding_readout(model, activations, data.closing, token_id, minus_id)
        per_unit = dictionary.directions.float() @ readout.to(dictionary.directions.device)
        closing, control, per_unit = closing.cpu(), control.cpu(), per_unit.cpu()
    frame = pd.DataFrame({
        "feature": range(dictionary.n_features), "act_closing": closing.numpy(),
        "act_control": control.numpy(), "selectivity": (closing - control).numpy(),
        "logit_per_unit": per_unit.numpy(), "contribution": (closing * per_unit).numpy()})
    return frame.sort_values("contribution", ascending=False, kind="stable").reset_index(
        drop=True)


# ------------------------------------------------------------------------ experiment
def parens_setup(model: ModelSpec = "tiny", *, device: str = "cpu", dtype: str | None = None,
                 remote: bool | str = False, set_name: str | None = None,
                 dictionaries: str | os.PathLike[str] | None = None, n_texts: int = 12,
                 n_targets: int = 2, settings: RunSettings | None = None
                 ) -> tuple[CircuitRuns, pd.DataFrame, ParensData]:
    """Load the model (unless given) and dictionaries, rank the last-layer ")" features,
    and cache the runs with the top ``n_targets`` as targets (mean activation over ")"
    positions). Returns ``(runs, ranking, data)``; see ``rank_parens_features``."""
    settings = settings or RunSettings()
    if isinstance(n_targets, bool) or not isinstance(n_targets, int) or n_targets < 1:
        raise ParameterError(f"n_targets must be an integer >= 1, got {n_targets!r}",
                             hint="the number of last-layer ')' features to explain, e.g. 2")
    model, name = resolve_model(model, device=device, dtype=dtype, remote=remote)
    _, chosen = default_dictionaries(name, model, set_name, dictionaries,
                                     progress=settings.progress)
    last = f"resid_out.{num_layers(model) - 1}"
    if last not in chosen:
        raise DictionaryLoadError(f"the dictionary set has no {last}",
                                  hint=f"it has {sorted(chosen)}")
    data = parens_data(model, n_texts, seed=settings.seed)
    with torch.no_grad(), trace(model, data.ids.to(model_device(model))):
        last_activation = Site.parse(last).read(model).save()
    ranking = rank_parens_features(model, chosen[last], last_activation, data)
    top = ranking["feature"].head(n_targets).tolist()
    sites = {"embed": TokenBasis.from_model(model)}
    sites.update({site: d for site, d in chosen.items()
                  if Site.parse(site).depth <= Site.parse(last).depth})
    targets = [FeatureTarget(last, int(f), positions=data.closing, reduce="mean")
               for f in top]
    runs = CircuitRuns(model, sites, _rows(data), targets=targets, settings=settings)
    return runs, ranking, data


def _rows(data: ParensData) -> list[list[int]]:
    return [data.ids[i, :int(length)].tolist() for i, length in enumerate(data.lengths)]


def parens_circuit(
    model: ModelSpec = "tiny",
    *,
    device: str = "cpu",
    dtype: str | None = None,
    remote: bool | str = False,
    dictionaries: str | os.PathLike[str] | None = None,
    set_name: str | None = None,
    n_texts: int = 8,
    n_targets: int = 2,
    method: str = "acdc",
    tau: float = 0.03,
    relative_tau: bool = True,
    ablation: str = "mean",
    max_nodes: int | None = None,
    edges: bool = False,
    out: str | os.PathLike[str] | None = None,
    settings: RunSettings | None = None,
) -> CircuitResult:
    """The closing-parenthesis circuit: the ``n_targets`` last-layer features that drive
    ")" (``rank_parens_features``), explained back to the input tokens over ``n_texts``
    held-out documents.

    Args:
        model: bundled name, checkpoint folder or hub id (loaded with ``device``, ``dtype``,
            ``remote``), or a loaded model.
        dictionaries, set_name: folder of sets ``<set>/<site>/`` (default: the
            checkpoint's) and the set to use (default: ``preferred_set``).
        method, tau, relative_tau, max_nodes: discovery (``build_circuit``).
        ablation: for discovery and faithfulness.
        edges: also score the edge set (path patching; slower).
        out: folder for the outputs, ``parens_features.csv`` included (default: none).
        settings: memory budget, rows per pass (default 256), seed, progress bars.

    Returns:
        ``CircuitResult`` with the feature ranking in ``features``.
    """
    settings = settings or RunSettings()
    check_tau(tau)  # before the model loads, not after the runs are cached
    if out is not None:
        ensure_writable_dir(out)
    start = time.perf_counter()
    with seeded(settings.seed):
        runs, ranking, data = parens_setup(model, device=device, dtype=dtype, remote=remote,
                                           set_name=set_name, dictionaries=dictionaries,
                                           n_texts=n_texts, n_targets=n_targets,
                                           settings=settings)
        by_direction = ranking.sort_values("logit_per_unit", ascending=False)["feature"].head(8)
        by_activation = ranking.sort_values("selectivity", ascending=False)["feature"].head(8)
        preamble = "\n".join([
            (f"{len(data.texts)} documents, {int(data.closing.sum())} positions where ')' is "
            f"forced, {int(data.control.sum())} control positions"),
            ("\nlast-layer features that drive ')' (top 8 by activation at ')' positions × "
            "logit(')') − logit('.') per unit):"),
            ranking.head(8).to_string(index=False, float_format=lambda v: f"{v:.3f}"),
            (f"top by decoder direction: {by_direction.tolist()}; top by selectivity: "
            f"{by_activation.tolist()}")])
        graph = build_circuit(runs, method, tau=tau, ablation=ablation,
                              relative_tau=relative_tau, max_nodes=max_nodes)
        return evaluate_circuit(
            runs, graph, name="parens",
            title="Circuit for the ')' features (mean over ')'-predicting positions)",
            method=method, ablation=ablation, edges=edges, features=ranking,
            preamble=preamble, out=out, start=start)
