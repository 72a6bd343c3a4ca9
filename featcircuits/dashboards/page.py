"""Feature dashboards, the pages: a self-contained HTML fragment (:func:`dashboard_html`)
for ``featcircuits.render.to_html(graph, dashboards=...)``, a standalone page, writing
files (:func:`write_dashboard`), and one fragment per feature node of a circuit
(:func:`dashboards_for_graph`)."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping
from pathlib import Path

from featcircuits.dashboards.data import FeatureDashboard
from featcircuits.dashboards.figure import render_dashboard, shade, svg_drops, svg_histogram
from featcircuits.dashboards.labels import graph_dashboard_data
from featcircuits.dictionaries.base import Dictionary


# ------------------------------------------------------------------------------ HTML
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
                         f'{shade(max(value, 0.0) / peak)};{border}padding:0 1px">'
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
        f"{svg_histogram(data)}"
        f"<h4 style=\"margin:6px 0 2px\">Top contexts</h4>{''.join(ctx_rows)}"
        f"<h4 style=\"margin:6px 0 2px\">Direct logit effect</h4>"
        f'<table style="width:100%;font-size:11px;border-collapse:collapse">'
        f"{logit_rows(data.logit_up, '#2166ac')}"
        f"{logit_rows(data.logit_down, '#b2182b')}</table>"
        f"<p style=\"font-size:10px;color:#555\">{esc(data.logit_approximation)}</p>"
        f"<h4 style=\"margin:6px 0 2px\">Zero-ablation: drop in logit "
        f"{esc(repr(data.ablation_token))} (mean {mean_drop:.3g})</h4>"
        f"{svg_drops(data.ablation_drops)}</div>"
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
    from featcircuits.errors import OutputError
    from featcircuits.writes import atomic_write_text

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
    fragments: dict[str, str] = {}
    for nodes, data in graph_dashboard_data(model, dictionaries, graph, progress=progress,
                                            **kwargs):
        fragment = dashboard_html(data)
        for node in nodes:
            fragments[node] = fragment
    return fragments


__all__ = ["dashboard_html", "dashboard_page", "dashboards_for_graph", "write_dashboard"]
