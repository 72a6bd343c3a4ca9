"""Feature dashboards: what one dictionary feature responds to and what it does.

``feature_dashboard_data`` runs the model over a sample of texts (default: a seeded sample of
the bundled corpus) and gathers, for feature ``i`` of a dictionary at a site:

* its activation ``c_i`` at every token (token strings kept alongside);
* the ``top_k`` texts with the largest activation (the *top contexts*);
* a histogram of its nonzero activations, split by the token at which it fires;
* its *direct logit effect*: the decoder direction ``f_i`` pushed straight through the final
  norm and the unembedding, ignoring everything in between (see :func:`direct_logit_effect`);
* its *ablation effect*: the drop in one logit (default: the token ``f_i`` pushes up most) at
  every position where it fires, when ``c_i f_i`` is subtracted from the site activation at
  every position of the text (the dictionary's error term is kept), measured with nnsight.

The result is plain data (:class:`FeatureDashboard`); ``featcircuits.dashboards.figure``
draws it (matplotlib, SVG) and ``featcircuits.dashboards.page`` makes HTML and writes files.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from featcircuits.dictionaries.base import Dictionary
from featcircuits.engine.edits import patch_site
from featcircuits.errors import ParameterError, SiteError
from featcircuits.model.loading import max_positions, model_device, to_model, trace
from featcircuits.model.readout import readout
from featcircuits.model.sites import Site
from featcircuits.tasks.prompts import tokenizer_name, unknown_words

#: number of named token groups in the histogram; the rest is pooled as "other"
HISTOGRAM_TOKEN_GROUPS = 8
HISTOGRAM_BINS = 30
OTHER = "other"

LOGIT_APPROXIMATION = (
    "direct logit effect = W_U · (γ ⊙ centre(f_i)): the decoder direction f_i is centred "
    "(LayerNorm's mean subtraction; skipped for RMSNorm), scaled by the final norm's weight γ "
    "and multiplied by the unembedding W_U. The norm's division by the activation's standard "
    "deviation, its bias and the unembedding bias are ignored, so values compare tokens with "
    "each other but are not exact logit changes."
)

# ------------------------------------------------------------------------------- data
@dataclass
class DashboardContext:
    """One text among the top contexts.

    Attributes:
        text_index: index of the text in the sample.
        tokens: token strings ``[n_tokens]``.
        activations: the feature's activation at each token ``[n_tokens]``.
        max_position: position of the largest counted activation.
        max_activation: that activation.
        ablation_drops: per token, clean minus ablated logit of the ablation token where the
            feature fires (``None`` where it does not, or the position is not counted).
    """

    text_index: int
    tokens: list[str]
    activations: list[float]
    max_position: int
    max_activation: float
    ablation_drops: list[float | None]


@dataclass
class FeatureDashboard:
    """Plain data behind a feature dashboard (``asdict`` / ``to_dict`` give JSON-ready dicts).

    Attributes:
        site, feature, dictionary: what was measured (``dictionary`` is its ``repr``).
        tokens, activations: per text, token strings and the feature's activation at each.
        counted: per text, whether each position enters the statistics (a leading BOS token
            does not).
        top_contexts: the ``top_k`` texts with the largest activation, largest first.
        fire_activations, fire_tokens: every nonzero counted activation and its token.
        histogram_edges: ``HISTOGRAM_BINS + 1`` bin edges over the nonzero activations.
        histogram_counts: token group -> count per bin (top tokens by count, then "other").
        logit_up, logit_down: ``(token, direct logit effect)``, 10 most positive / negative.
        ablation_token, ablation_token_id: the logit whose drop is measured.
        ablation_drops: drop of that logit at every counted position where the feature fires.
    """

    site: str
    feature: int
    dictionary: str
    n_texts: int
    n_counted_tokens: int
    tokens: list[list[str]]
    activations: list[list[float]]
    counted: list[list[bool]]
    top_contexts: list[DashboardContext]
    fire_activations: list[float]
    fire_tokens: list[str]
    histogram_edges: list[float]
    histogram_counts: dict[str, list[int]]
    logit_up: list[tuple[str, float]]
    logit_down: list[tuple[str, float]]
    ablation_token: str
    ablation_token_id: int
    ablation_drops: list[float]
    logit_approximation: str = LOGIT_APPROXIMATION
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def density(self) -> float:
        """Fraction of counted tokens at which the feature is nonzero."""
        return len(self.fire_activations) / max(self.n_counted_tokens, 1)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------ collection
@dataclass
class SiteRun:
    """Token ids and site activations of a sample of texts (shared across features);
    built by :func:`collect_site`."""

    input_ids: list[torch.Tensor]  # per batch [B, T], right-padded
    lengths: list[torch.Tensor]  # per batch [B]
    activations: list[torch.Tensor]  # per batch [B, T, d_model]
    token_strings: list[list[str]]


def default_texts(n: int = 200, seed: int = 0) -> list[str]:
    """A seeded sample of ``n`` documents of the bundled model's corpus."""
    from featcircuits.tasks.corpus import corpus_documents

    return corpus_documents(n, seed=seed)


def _tokenize(tokenizer, texts: Sequence[str], n_ctx: int) -> list[list[int]]:
    rows = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ParameterError(f"texts[{index}] is a {type(text).__name__}, not a str")
        ids = list(tokenizer(text)["input_ids"])[:n_ctx]
        if ids:
            rows.append(ids)
    if not rows:
        raise ParameterError("no text produced any token", hint="pass non-empty texts")
    return rows


def _token_string(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)], skip_special_tokens=False)


def collect_site(model, site: Site, texts: Sequence[str], *, n_ctx: int, batch_size: int,
                 progress: bool = True) -> SiteRun:
    """Read ``site`` over ``texts`` (cut to ``n_ctx`` tokens), ``batch_size`` texts per
    forward pass; activations come back as float32 on the CPU."""
    tokenizer = model.tokenizer
    rows = _tokenize(tokenizer, texts, n_ctx)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache: dict[int, str] = {}
    token_strings = []
    for ids in rows:
        for token_id in ids:
            if token_id not in cache:
                cache[token_id] = _token_string(tokenizer, token_id)
        token_strings.append([cache[t] for t in ids])
    run = SiteRun([], [], [], token_strings)
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=f"dashboard: reading {site}", disable=not progress,
                      leave=False):
        batch = rows[start:start + batch_size]
        lengths = torch.tensor([len(ids) for ids in batch])
        input_ids = torch.full((len(batch), int(lengths.max())), pad_id, dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
        # Right padding + causal attention: real tokens never see the padding. The ids stay
        # on the CPU here (bookkeeping); the model gets a copy on its device.
        with trace(model, input_ids.to(model_device(model))):
            activation = site.read(model).save()
        run.input_ids.append(input_ids)
        run.lengths.append(lengths)
        run.activations.append(activation.detach().float().cpu())
    return run


# ----------------------------------------------------------------- direct logit effect
def direct_logit_effect(model, direction: torch.Tensor) -> torch.Tensor:
    """Direct logit effect of a residual direction ``[d_model]`` -> ``[vocab]``.

    ``W_U · (γ ⊙ centre(direction))`` where ``γ`` is the final norm's gain (Gemma:
    ``1 + weight``) and centring (subtracting the mean over ``d_model``) is applied for
    LayerNorms only: ``featcircuits.model.readout.Readout.direct_effect`` with scale 1. See
    ``LOGIT_APPROXIMATION`` for what is ignored.
    """
    return readout(model).direct_effect(direction)


# ----------------------------------------------------------------------- histogram
def _histogram(values: list[float], tokens: list[str], n_bins: int = HISTOGRAM_BINS,
               n_groups: int = HISTOGRAM_TOKEN_GROUPS) -> tuple[list[float], dict[str, list[int]]]:
    if not values:
        return [0.0, 1.0], {}
    low, high = min(values), max(values)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / n_bins
    edges = [low + width * k for k in range(n_bins + 1)]
    top = [token for token, _ in Counter(tokens).most_common(n_groups)]
    groups = {token: [0] * n_bins for token in top}
    if len(set(tokens)) > len(top):
        groups[OTHER] = [0] * n_bins
    for value, token in zip(values, tokens, strict=True):
        index = min(int((value - low) / width), n_bins - 1)
        groups[token if token in top else OTHER][index] += 1
    return edges, groups


# ------------------------------------------------------------------------- ablation
def _ablation_drops(model, site: Site, dictionary: Dictionary, feature: int, run: SiteRun,
                    feature_acts: list[torch.Tensor], token_id: int, *,
                    progress: bool) -> list[torch.Tensor]:
    """Per batch ``[B, T]``: clean minus ablated logit of ``token_id`` (zero where no text of
    the batch fires; callers mask by where the feature fires)."""
    # a copy where the model computes (device, dtype), edited by the engine's primitive;
    # the caller's dictionary is left as it is
    on_model = to_model(copy.deepcopy(dictionary), model)
    device = model_device(model)
    drops = []
    for input_ids, acts in tqdm(list(zip(run.input_ids, feature_acts, strict=True)),
                                desc=f"dashboard: ablating {site}/{feature}",
                                disable=not progress, leave=False):
        firing = (acts != 0).any(dim=1)
        drop = torch.zeros(acts.shape)
        if firing.any():
            rows = input_ids[firing]
            n = rows.shape[0]
            # One batch holds the clean copy (first n rows) and the ablated copy (last n).
            doubled = torch.cat([rows, rows])
            ablate = torch.zeros(2 * n, 1, device=device)  # [2n, 1]: the feature, last n rows
            ablate[n:] = 1.0
            logits: list[torch.Tensor] = []
            with trace(model, doubled.to(device)):
                patch_site(model, site, on_model, torch.zeros((), device=device), ablate,
                           feature_ids=torch.tensor([feature], device=device))
                logits.append(model.output.logits[:, :, token_id].save())
            values = logits[0].detach().float().cpu()
            drop[firing] = values[:n] - values[n:]
        drops.append(drop)
    return drops


# ------------------------------------------------------------------------------ main
def feature_dashboard_data(
    model,
    dictionary: Dictionary,
    site: str | Site,
    feature: int,
    *,
    texts: Sequence[str] | None = None,
    top_k: int = 10,
    logit_token: int | str | None = None,
    n_ctx: int = 64,
    batch_size: int = 32,
    progress: bool = True,
    site_run: SiteRun | None = None,
    ablate: bool = True,
) -> FeatureDashboard:
    """Measure feature ``feature`` of ``dictionary`` at ``site`` over ``texts``.

    Args:
        model: an nnsight ``LanguageModel`` (``load_model``).
        dictionary: the dictionary used at ``site``.
        site: e.g. ``"resid_out.3"``.
        feature: dictionary index; ``FeatureIdError`` when out of range.
        texts: the sample; default ``default_texts()`` (200 seeded corpus documents).
        top_k: number of top contexts (distinct texts, by their largest activation).
        logit_token: token id or single-token string whose logit drop the ablation measures;
            default the token with the largest direct logit effect.
        n_ctx: texts are cut to their first ``n_ctx`` tokens.
        batch_size: texts per forward pass.
        site_run: activations of ``site`` over ``texts`` already read by
            :func:`collect_site` (shared between features of one site).
        ablate: measure the ablation drops (one more forward pass per batch); without it
            ``ablation_drops`` is empty and the contexts' drops are ``None``.

    Positions holding a leading BOS token are shown but not counted in the statistics.
    """
    site = Site.parse(site)
    if dictionary.input_site not in (None, dictionary.site, str(site)):
        raise ParameterError(f"{dictionary!r} reads {dictionary.input_site} and writes {site}; "
                             "dashboards read and ablate one site",
                             hint="dashboards of transcoder features are not supported yet")
    feature = int(dictionary.check_feature_ids([feature])[0])
    if top_k < 1 or n_ctx < 1 or batch_size < 1:
        raise ParameterError(f"top_k, n_ctx and batch_size must be >= 1, got {top_k}, {n_ctx}, "
                             f"{batch_size}")
    limit = max_positions(model)
    if limit is not None and n_ctx > limit[0]:
        raise ParameterError(f"n_ctx {n_ctx} exceeds the model's {limit[0]} positions "
                             f"(config.{limit[1]})", hint=f"use n_ctx={limit[0]} or less")
    if dictionary.d_model != site.width(model):
        raise SiteError(f"{dictionary!r} has width {dictionary.d_model} but site {site} has "
                        f"width {site.width(model)}",
                        hint="use the dictionary trained for this site")
    tokenizer = model.tokenizer
    if logit_token is not None:  # a bad token fails before the corpus is scanned
        _resolve_token(tokenizer, logit_token, default=0, vocab=None)
    texts = default_texts() if texts is None else list(texts)
    run = site_run or collect_site(model, site, texts, n_ctx=n_ctx, batch_size=batch_size,
                           progress=progress)

    # Direct logit effect.
    effect = direct_logit_effect(model, site.to_residual(model, dictionary.directions[feature]))
    order = torch.argsort(effect, descending=True)
    n_show = min(10, effect.numel())
    logit_up = [(_token_string(tokenizer, t), float(effect[t])) for t in order[:n_show]]
    logit_down = [(_token_string(tokenizer, t), float(effect[t]))
                  for t in order.flip(0)[:n_show]]
    token_id = _resolve_token(tokenizer, logit_token, default=int(order[0]),
                              vocab=effect.numel())

    # Activations per token.
    bos = tokenizer.bos_token_id
    feature_acts = []
    with torch.no_grad():
        for acts in run.activations:
            feature_acts.append(dictionary.encode(acts.to(dictionary.directions)
                                                  )[..., feature].float().cpu())
    counted_masks = []
    for input_ids, lengths in zip(run.input_ids, run.lengths, strict=True):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        mask = positions[None, :] < lengths[:, None]
        if bos is not None:
            mask[:, 0] &= input_ids[:, 0] != bos
        counted_masks.append(mask)
    if ablate:
        drops = _ablation_drops(model, site, dictionary, feature, run,
                                [a * m for a, m in zip(feature_acts, counted_masks,
                                                       strict=True)],
                                token_id, progress=progress)
    else:
        drops = [torch.zeros_like(a) for a in feature_acts]

    tokens, activations, counted, per_text_drops = [], [], [], []
    fire_values, fire_tokens, all_drops = [], [], []
    text = 0
    for acts, mask, drop, lengths in zip(feature_acts, counted_masks, drops, run.lengths,
                                         strict=True):
        for row in range(acts.shape[0]):
            n = int(lengths[row])
            row_tokens = run.token_strings[text]
            row_acts = [float(v) for v in acts[row, :n]]
            row_mask = [bool(v) for v in mask[row, :n]]
            row_drops: list[float | None] = []
            for pos in range(n):
                fires = row_mask[pos] and row_acts[pos] != 0.0
                if fires:
                    fire_values.append(row_acts[pos])
                    fire_tokens.append(row_tokens[pos])
                    if ablate:
                        all_drops.append(float(drop[row, pos]))
                row_drops.append(float(drop[row, pos]) if fires and ablate else None)
            tokens.append(row_tokens)
            activations.append(row_acts)
            counted.append(row_mask)
            per_text_drops.append(row_drops)
            text += 1

    best = []
    for index, (row_acts, row_mask) in enumerate(zip(activations, counted, strict=True)):
        candidates = [(a, p) for p, (a, m) in enumerate(zip(row_acts, row_mask, strict=True))
                      if m]
        if candidates:
            value, position = max(candidates, key=lambda item: (item[0], -item[1]))
            best.append((value, index, position))
    best.sort(key=lambda item: (-item[0], item[1]))
    top_contexts = [
        DashboardContext(index, tokens[index], activations[index], position, value,
                         per_text_drops[index])
        for value, index, position in best[:top_k]
    ]
    edges, groups = _histogram(fire_values, fire_tokens)
    return FeatureDashboard(
        site=str(site), feature=feature, dictionary=repr(dictionary), n_texts=len(tokens),
        n_counted_tokens=sum(sum(m) for m in counted), tokens=tokens, activations=activations,
        counted=counted, top_contexts=top_contexts, fire_activations=fire_values,
        fire_tokens=fire_tokens, histogram_edges=edges, histogram_counts=groups,
        logit_up=logit_up, logit_down=logit_down,
        ablation_token=_token_string(tokenizer, token_id), ablation_token_id=token_id,
        ablation_drops=all_drops,
        notes={"ablation": "c_i f_i subtracted at every position of a text at once (error term "
               "kept); drop = clean logit - ablated logit at each position where c_i != 0"},
    )


def _resolve_token(tokenizer, token: int | str | None, *, default: int, vocab: int | None
                   ) -> int:
    """The token id of ``logit_token`` (``default`` for ``None``); ``ParameterError`` for a
    string of several tokens or one the vocabulary lacks (read as the unknown token), or an
    id outside ``0..vocab-1`` (``vocab`` ``None``: not checked yet)."""
    if token is None:
        return default
    if isinstance(token, str):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ParameterError(f"logit_token {token!r} is {len(ids)} tokens, not one",
                                 hint="pass a single-token string or a token id")
        if unknown_words(tokenizer, token, ids):
            raise ParameterError(
                f"logit_token {token!r} (--logit-token) is not in the vocabulary of the "
                f"tokenizer ({tokenizer_name(tokenizer)}): it tokenizes to the unknown token "
                f"{tokenizer.unk_token!r}",
                hint="pass a token the model knows (tokenizer.tokenize(word) shows it) or a "
                "token id")
        return int(ids[0])
    if isinstance(token, bool) or not isinstance(token, int) or token < 0 or (
            vocab is not None and token >= vocab):
        raise ParameterError(f"logit_token {token!r} is not a token id in 0.."
                             f"{'' if vocab is None else vocab - 1}")
    return int(token)


__all__ = ["HISTOGRAM_BINS", "HISTOGRAM_TOKEN_GROUPS", "LOGIT_APPROXIMATION", "OTHER",
           "DashboardContext", "FeatureDashboard", "SiteRun", "collect_site", "default_texts",
           "direct_logit_effect", "feature_dashboard_data"]
