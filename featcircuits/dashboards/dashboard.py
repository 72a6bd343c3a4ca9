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

``render_dashboard`` draws it with matplotlib; ``dashboard_html`` makes a self-contained HTML
fragment for ``featcircuits.render.to_html(graph, dashboards=...)``;
``dashboards_for_graph`` builds one fragment per feature node of a circuit.
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import ParameterError, SiteError
from featcircuits.model.loading import model_device, trace, underlying_module
from featcircuits.model.sites import Site, architecture

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
class _SiteRun:
    """Token ids and site activations of a sample of texts (shared across features)."""

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


def _collect(model, site: Site, texts: Sequence[str], *, n_ctx: int, batch_size: int,
             progress: bool = True) -> _SiteRun:
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
    run = _SiteRun([], [], [], token_strings)
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

    ``W_U · (γ ⊙ centre(direction))`` where ``γ`` is the final norm's weight and centring
    (subtracting the mean over ``d_model``) is applied for ``LayerNorm`` only; see
    ``LOGIT_APPROXIMATION`` for what is ignored.
    """
    arch = architecture(model)
    root = underlying_module(model)
    norm = root.get_submodule(arch.final_norm)
    getter = getattr(root, "get_output_embeddings", None)
    unembed = getter() if getter is not None else None
    if unembed is None:
        try:
            unembed = root.get_submodule(arch.unembed)
        except AttributeError as exc:
            raise SiteError(f"cannot find the unembedding of {type(root).__name__}",
                            hint="the model needs get_output_embeddings()") from exc
    vector = direction.detach().float()
    if isinstance(norm, torch.nn.LayerNorm):
        vector = vector - vector.mean()
    weight = getattr(norm, "weight", None)
    if weight is not None:
        vector = vector * weight.detach().float().to(vector.device)
    return unembed.weight.detach().float().to(vector.device) @ vector


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
def _ablation_drops(model, site: Site, dictionary: Dictionary, feature: int, run: _SiteRun,
                    feature_acts: list[torch.Tensor], token_id: int, *,
                    progress: bool) -> list[torch.Tensor]:
    """Per batch ``[B, T]``: clean minus ablated logit of ``token_id`` (zero where no text of
    the batch fires; callers mask by where the feature fires)."""
    direction = dictionary.directions[feature].detach()
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
            logits: list[torch.Tensor] = []
            with trace(model, doubled.to(model_device(model))):
                x = site.read(model)
                # The dictionary may hold another dtype (fp32 vs bf16) or sit on another
                # device than the model: compute where it is, bring the edit back.
                c = dictionary.encode(x[n:].to(direction))[..., feature]
                ablated = x[n:] - (c.unsqueeze(-1) * direction).to(x)
                site.write(model, torch.cat([x[:n], ablated]))
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
    _run: _SiteRun | None = None,
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
    from featcircuits.model.sites import d_model

    if dictionary.d_model != d_model(model):
        raise SiteError(f"{dictionary!r} has width {dictionary.d_model} but site {site} has "
                        f"width {d_model(model)}", hint="use the dictionary trained for this site")
    tokenizer = model.tokenizer
    texts = default_texts() if texts is None else list(texts)
    run = _run or _collect(model, site, texts, n_ctx=n_ctx, batch_size=batch_size,
                           progress=progress)

    # Direct logit effect.
    effect = direct_logit_effect(model, dictionary.directions[feature])
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
    drops = _ablation_drops(model, site, dictionary, feature, run,
                            [a * m for a, m in zip(feature_acts, counted_masks, strict=True)],
                            token_id, progress=progress)

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
                    all_drops.append(float(drop[row, pos]))
                row_drops.append(float(drop[row, pos]) if fires else None)
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


def _resolve_token(tokenizer, token: int | str | None, *, default: int, vocab: int) -> int:
    if token is None:
        return default
    if isinstance(token, str):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ParameterError(f"logit_token {token!r} is {len(ids)} tokens, not one",
                                 hint="pass a single-token string or a token id")
        return int(ids[0])
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
        raise ParameterError(f"logit_token {token!r} is not a token id in 0..{vocab - 1}")
    return int(token)


# ------------------------------------------------------------------------- rendering
_GROUP_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf"]
_OTHER_COLOR = "#b0b0b0"


def _group_color(index: int, group: str) -> str:
    return _OTHER_COLOR if group == OTHER else _GROUP_COLORS[index % len(_GROUP_COLORS)]


def _shown_token(token: str) -> str:
    return token.replace("\n", "\\n") if token.strip() else repr(token)


def _window(context: DashboardContext, before: int = 10, after: int = 3) -> range:
    start = max(0, context.max_position - before)
    return range(start, min(len(context.tokens), context.max_position + after + 1))


def render_dashboard(data: FeatureDashboard, path: str | os.PathLike[str] | None = None,
                     *, n_contexts: int = 6, dpi: float = 150.0):
    """Draw ``data`` as one matplotlib figure; with ``path`` save it (format by extension).

    Panels: activation histogram stacked by firing token, direct logit effect (top 10 up /
    down), ablation drop histogram, and the top contexts with tokens shaded by activation.
    """
    import matplotlib
    from matplotlib.figure import Figure

    from featcircuits.render.diagram import save_figure

    # tight layout, not constrained: constrained layout goes through kiwisolver, whose solver
    # failed intermittently under pytest-xdist workers ("Expected object of type Variable")
    fig = Figure(figsize=(14, 9.5), layout="tight")
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 0.9])
    ax_hist = fig.add_subplot(grid[0, 0])
    ax_logit = fig.add_subplot(grid[0, 1])
    ax_drop = fig.add_subplot(grid[0, 2])
    ax_ctx = fig.add_subplot(grid[1, :])
    fig.suptitle(f"Feature {data.feature} at {data.site} — {data.dictionary}\n"
                 f"fires on {len(data.fire_activations)} of {data.n_counted_tokens} tokens "
                 f"({100 * data.density:.1f}%) in {data.n_texts} texts", fontsize=12)

    # Histogram stacked by token.
    edges = data.histogram_edges
    widths = [edges[k + 1] - edges[k] for k in range(len(edges) - 1)]
    bottom = [0] * len(widths)
    for index, (group, counts) in enumerate(data.histogram_counts.items()):
        label = group if group == OTHER else f"'{_shown_token(group)}'"
        ax_hist.bar(edges[:-1], counts, width=widths, bottom=bottom, align="edge",
                    color=_group_color(index, group), label=f"{label} ({sum(counts)})",
                    edgecolor="white", linewidth=0.3)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax_hist.set_title("Activation histogram (nonzero), coloured by firing token")
    ax_hist.set_xlabel(f"activation of feature {data.feature}")
    ax_hist.set_ylabel("number of tokens")
    if data.histogram_counts:
        ax_hist.legend(fontsize=8, title="token (count)", title_fontsize=8)
    else:
        ax_hist.text(0.5, 0.5, "the feature never fires", ha="center", transform=ax_hist.transAxes)

    # Direct logit effect.
    rows = list(data.logit_up) + list(reversed(data.logit_down))
    labels = [f"'{_shown_token(t)}'" for t, _ in rows]
    values = [v for _, v in rows]
    ys = list(range(len(rows)))[::-1]
    ax_logit.barh(ys, values, color=["#2166ac" if v >= 0 else "#b2182b" for v in values])
    ax_logit.set_yticks(ys, labels, fontsize=8, family="monospace")
    ax_logit.axvline(0, color="black", linewidth=0.6)
    ax_logit.set_title("Direct logit effect (top 10 up / down)")
    ax_logit.set_xlabel("≈ logit change per unit activation\n(final-norm weight · unembedding; "
                        "see docs/dashboards.md)", fontsize=8)

    # Ablation drops.
    if data.ablation_drops:
        ax_drop.hist(data.ablation_drops, bins=30, color="#4d4d4d")
        ax_drop.axvline(0, color="black", linewidth=0.6)
    else:
        ax_drop.text(0.5, 0.5, "no firing positions", ha="center", transform=ax_drop.transAxes)
    ax_drop.set_title(f"Zero-ablation: drop in logit '{_shown_token(data.ablation_token)}'")
    ax_drop.set_xlabel("clean − ablated logit at positions where the feature fires")
    ax_drop.set_ylabel("number of positions")

    # Top contexts: monospace tokens shaded by activation.
    ax_ctx.set_axis_off()
    ax_ctx.set_xlim(0, 1)
    ax_ctx.set_ylim(0, 1)
    ax_ctx.set_title("Top activating contexts (shade = activation; bold box = max; "
                     "number = max activation)", loc="left")
    contexts = data.top_contexts[:n_contexts]
    cmap = matplotlib.colormaps["Oranges"]
    peak = max((abs(c.max_activation) for c in contexts), default=1.0) or 1.0
    line_height = 1.0 / max(len(contexts), 1)
    char_width = 0.0056
    for row, context in enumerate(contexts):
        y = 1.0 - (row + 0.5) * line_height
        ax_ctx.text(0.0, y, f"{context.max_activation:7.2f}", family="monospace", fontsize=9,
                    va="center", ha="left", color="#333")
        x = 0.06
        for pos in _window(context):
            token = _shown_token(context.tokens[pos])
            level = max(context.activations[pos], 0.0) / peak
            bbox = {"boxstyle": "square,pad=0.15", "facecolor": cmap(0.85 * level),
                    "edgecolor": "black" if pos == context.max_position else "none",
                    "linewidth": 1.2}
            color = "white" if level > 0.6 else "black"
            ax_ctx.text(x, y, token, family="monospace", fontsize=9, va="center", ha="left",
                        bbox=bbox, color=color,
                        fontweight="bold" if pos == context.max_position else "normal")
            x += char_width * (len(token) + 1.6)
            if x > 0.98:
                break
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


# ------------------------------------------------------------------------------ HTML
def _shade(level: float) -> str:
    level = min(max(level, 0.0), 1.0)
    return f"rgba(230,110,20,{0.08 + 0.8 * level:.3f})" if level > 0 else "transparent"


def _svg_histogram(data: FeatureDashboard, width: int = 340, height: int = 130) -> str:
    counts = data.histogram_counts
    if not counts:
        return "<p><em>The feature never fires on this sample.</em></p>"
    n_bins = len(data.histogram_edges) - 1
    totals = [sum(c[k] for c in counts.values()) for k in range(n_bins)]
    top = max(totals) or 1
    plot_h = height - 18
    bar_w = width / n_bins
    parts = [(f'<svg width="{width}" height="{height}" '
             f'role="img" aria-label="activation histogram">')]
    for k in range(n_bins):
        y = plot_h
        for index, (group, group_counts) in enumerate(counts.items()):
            if not group_counts[k]:
                continue
            h = plot_h * group_counts[k] / top
            y -= h
            tip = html.escape(f"{group}: {group_counts[k]} in [{data.histogram_edges[k]:.3g}, "
                              f"{data.histogram_edges[k + 1]:.3g})", quote=True)
            parts.append(f'<rect x="{k * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{_group_color(index, group)}">'
                         f"<title>{tip}</title></rect>")
    low, high = data.histogram_edges[0], data.histogram_edges[-1]
    parts.append(f'<text x="0" y="{height - 4}" font-size="10">{low:.3g}</text>')
    parts.append(f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">'
                 f"{high:.3g}</text>")
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="white-space:nowrap"><span style="display:inline-block;width:9px;'
        f'height:9px;background:{_group_color(i, g)}"></span> '
        f"{html.escape(g if g == OTHER else repr(g))} ({sum(c)})</span>"
        for i, (g, c) in enumerate(counts.items()))
    return "".join(parts) + f'<div style="font-size:11px">{legend}</div>'


def _svg_drops(values: list[float], width: int = 340, height: int = 90, n_bins: int = 30) -> str:
    if not values:
        return "<p><em>No firing positions.</em></p>"
    low, high = min(values), max(values)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    step = (high - low) / n_bins
    counts = [0] * n_bins
    for v in values:
        counts[min(int((v - low) / step), n_bins - 1)] += 1
    top = max(counts)
    plot_h = height - 16
    bar_w = width / n_bins
    parts = [(f'<svg width="{width}" height="{height}" '
             f'role="img" aria-label="ablation drop histogram">')]
    for k, count in enumerate(counts):
        h = plot_h * count / top
        parts.append(f'<rect x="{k * bar_w:.1f}" y="{plot_h - h:.1f}" '
                     f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#555">'
                     f"<title>{count} in [{low + k * step:.3g}, {low + (k + 1) * step:.3g})"
                     "</title></rect>")
    parts.append(f'<text x="0" y="{height - 3}" font-size="10">{low:.3g}</text>')
    parts.append(f'<text x="{width}" y="{height - 3}" font-size="10" text-anchor="end">'
                 f"{high:.3g}</text></svg>")
    return "".join(parts)


def dashboard_html(data: FeatureDashboard, *, n_contexts: int | None = None) -> str:
    """A self-contained HTML fragment (inline SVG and styles, no external resources).

    All text from the data (tokens, dictionary name) is HTML-escaped.
    """
    esc = html.escape
    contexts = data.top_contexts if n_contexts is None else data.top_contexts[:n_contexts]
    peak = max((abs(c.max_activation) for c in contexts), default=1.0) or 1.0
    ctx_rows = []
    for context in contexts:
        spans = []
        for pos, (token, value) in enumerate(zip(context.tokens, context.activations,
                                                 strict=True)):
            drop = context.ablation_drops[pos]
            tip = f"act {value:.4g}" + ("" if drop is None else f"; ablation drop {drop:.4g}")
            border = "outline:1px solid #000;" if pos == context.max_position else ""
            spans.append(f'<span title="{esc(tip, quote=True)}" style="background:'
                         f'{_shade(max(value, 0.0) / peak)};{border}padding:0 1px">'
                         f"{esc(token)}</span>")
        ctx_rows.append(f'<div style="margin:3px 0;line-height:1.5;font-family:monospace;'
                        f'font-size:11px"><b>{context.max_activation:.3g}</b> '
                        + " ".join(spans) + "</div>")
    limit = max((abs(v) for _, v in list(data.logit_up) + list(data.logit_down)), default=1.0)
    limit = limit or 1.0

    def logit_rows(rows, color):
        cells = []
        for token, value in rows:
            width = 100 * abs(value) / limit
            cells.append(f'<tr><td style="font-family:monospace">{esc(repr(token))}</td>'
                         f'<td style="width:60%"><div style="background:{color};height:9px;'
                         f'width:{width:.1f}%"></div></td><td>{value:+.3g}</td></tr>')
        return "".join(cells)

    mean_drop = (sum(data.ablation_drops) / len(data.ablation_drops)
                 if data.ablation_drops else math.nan)
    return (
        f'<div class="fc-dashboard" style="font-size:12px">'
        f"<h3 style=\"font-size:13px;margin:4px 0\">Feature {data.feature} at "
        f"{esc(data.site)}</h3>"
        f"<p style=\"margin:2px 0\">{esc(data.dictionary)}; fires on "
        f"{len(data.fire_activations)} of {data.n_counted_tokens} tokens "
        f"({100 * data.density:.2f}%) in {data.n_texts} texts.</p>"
        f"<h4 style=\"margin:6px 0 2px\">Activation histogram (by firing token)</h4>"
        f"{_svg_histogram(data)}"
        f"<h4 style=\"margin:6px 0 2px\">Top contexts</h4>{''.join(ctx_rows)}"
        f"<h4 style=\"margin:6px 0 2px\">Direct logit effect</h4>"
        f'<table style="width:100%;font-size:11px;border-collapse:collapse">'
        f"{logit_rows(data.logit_up, '#2166ac')}"
        f"{logit_rows(data.logit_down, '#b2182b')}</table>"
        f"<p style=\"font-size:10px;color:#555\">{esc(data.logit_approximation)}</p>"
        f"<h4 style=\"margin:6px 0 2px\">Zero-ablation: drop in logit "
        f"{esc(repr(data.ablation_token))} (mean {mean_drop:.3g})</h4>"
        f"{_svg_drops(data.ablation_drops)}</div>"
    )


def dashboard_page(data: FeatureDashboard) -> str:
    """A standalone HTML page around :func:`dashboard_html`."""
    title = html.escape(f"Feature {data.feature} at {data.site}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"
            f"<title>{title}</title></head><body style=\"font-family:system-ui,sans-serif;"
            f"max-width:900px;margin:16px auto\">{dashboard_html(data)}</body></html>\n")


def write_dashboard(data: FeatureDashboard, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path``: ``.html`` a standalone page, ``.png/.svg/.pdf`` a figure."""
    from featcircuits.files import atomic_write_text
    from featcircuits.errors import OutputError

    target = Path(path)
    suffix = target.suffix.lower()
    if suffix in (".html", ".htm"):
        return atomic_write_text(target, dashboard_page(data))
    if suffix in (".png", ".svg", ".pdf"):
        render_dashboard(data, target)
        return target
    raise OutputError(f"cannot write a dashboard as {str(target)!r}: unknown extension "
                      f"{target.suffix!r}", hint="use a path ending in .html, .png, .svg or .pdf")


# ------------------------------------------------------------------------- circuits
def dashboards_for_graph(model, dictionaries: Mapping[str, Dictionary], graph, *,
                         progress: bool = True, **kwargs) -> dict[str, str]:
    """HTML dashboards for the feature nodes of a circuit graph: ``{node_id: fragment}``.

    Nodes of one (site, feature) share one dashboard; nodes whose site has no dictionary in
    ``dictionaries`` are skipped. Site activations are read once per site. ``kwargs`` go to
    :func:`feature_dashboard_data` (``texts``, ``top_k``, ``n_ctx``, ``batch_size``, ...).
    """
    from featcircuits.graph.schema import validate_circuit_graph

    validate_circuit_graph(graph)
    wanted: dict[tuple[str, int], list[str]] = {}
    for node, attrs in graph.nodes(data=True):
        if attrs.get("kind") == "feature" and attrs.get("feature") is not None:
            site = attrs.get("site")
            if site in dictionaries:
                wanted.setdefault((site, int(attrs["feature"])), []).append(node)
    texts = kwargs.pop("texts", None)
    texts = default_texts() if texts is None else list(texts)
    n_ctx = kwargs.get("n_ctx", 64)
    batch_size = kwargs.get("batch_size", 32)
    runs: dict[str, _SiteRun] = {}
    fragments: dict[str, str] = {}
    for site, feature in tqdm(sorted(wanted), desc="dashboards", disable=not progress):
        if site not in runs:
            runs[site] = _collect(model, Site.parse(site), texts, n_ctx=n_ctx,
                                  batch_size=batch_size, progress=progress)
        data = feature_dashboard_data(model, dictionaries[site], site, feature, texts=texts,
                                      progress=progress, _run=runs[site], **kwargs)
        fragment = dashboard_html(data)
        for node in wanted[(site, feature)]:
            fragments[node] = fragment
    return fragments
