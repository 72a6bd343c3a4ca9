"""Feature dashboards, the figures: one matplotlib figure (:func:`render_dashboard`) and
the inline SVG charts of the HTML fragment (:func:`svg_histogram`, :func:`svg_drops`)."""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING

from featcircuits.dashboards.data import OTHER, DashboardContext, FeatureDashboard

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# ------------------------------------------------------------------------ matplotlib
_GROUP_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf"]
_OTHER_COLOR = "#b0b0b0"


def group_color(index: int, group: str) -> str:
    """Colour of the ``index``-th histogram token group (grey for ``"other"``)."""
    return _OTHER_COLOR if group == OTHER else _GROUP_COLORS[index % len(_GROUP_COLORS)]


def shown_token(token: str) -> str:
    """A token as shown in figures: newlines escaped, blank tokens as their repr."""
    return token.replace("\n", "\\n") if token.strip() else repr(token)


def context_window(context: DashboardContext, before: int = 10, after: int = 3) -> range:
    """Positions of ``context`` drawn in the figure: ``before`` / ``after`` its maximum."""
    start = max(0, context.max_position - before)
    return range(start, min(len(context.tokens), context.max_position + after + 1))


def render_dashboard(data: FeatureDashboard, path: str | os.PathLike[str] | None = None,
                     *, n_contexts: int = 6, dpi: float = 150.0) -> Figure:
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
        label = group if group == OTHER else f"'{shown_token(group)}'"
        ax_hist.bar(edges[:-1], counts, width=widths, bottom=bottom, align="edge",
                    color=group_color(index, group), label=f"{label} ({sum(counts)})",
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
    labels = [f"'{shown_token(t)}'" for t, _ in rows]
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
    ax_drop.set_title(f"Zero-ablation: drop in logit '{shown_token(data.ablation_token)}'")
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
        for pos in context_window(context):
            token = shown_token(context.tokens[pos])
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

# ------------------------------------------------------------------------------- SVG
def shade(level: float) -> str:
    """CSS background of a token whose activation is ``level`` of the peak (0..1)."""
    level = min(max(level, 0.0), 1.0)
    return f"rgba(230,110,20,{0.08 + 0.8 * level:.3f})" if level > 0 else "transparent"


def svg_histogram(data: FeatureDashboard, width: int = 340, height: int = 130) -> str:
    """Inline SVG of the activation histogram stacked by firing token (+ its legend)."""
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
                         f'height="{h:.1f}" fill="{group_color(index, group)}">'
                         f"<title>{tip}</title></rect>")
    low, high = data.histogram_edges[0], data.histogram_edges[-1]
    parts.append(f'<text x="0" y="{height - 4}" font-size="10">{low:.3g}</text>')
    parts.append(f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">'
                 f"{high:.3g}</text>")
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="white-space:nowrap"><span style="display:inline-block;width:9px;'
        f'height:9px;background:{group_color(i, g)}"></span> '
        f"{html.escape(g if g == OTHER else repr(g))} ({sum(c)})</span>"
        for i, (g, c) in enumerate(counts.items()))
    return "".join(parts) + f'<div style="font-size:11px">{legend}</div>'


def svg_drops(values: list[float], width: int = 340, height: int = 90, n_bins: int = 30) -> str:
    """Inline SVG histogram of ablation drops."""
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


__all__ = ["context_window", "group_color", "render_dashboard", "shade", "shown_token",
           "svg_drops", "svg_histogram"]
