"""Patching curves: KL vs number of patched features and KL vs edit magnitude.

Drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas, never through
pyplot: importing or calling this leaves the process's backend and figures alone.
"""

from __future__ import annotations

import os

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featcircuits.errors import ParameterError
from featcircuits.writes import atomic_path

BASIS_STYLES = {
    "sae-sparse": ("#1b7837", "-"),
    "sae-dense": ("#5aae61", "-"),
    "pca": ("#2166ac", "--"),
    "ica": ("#762a83", "--"),
    "neuron": ("#b2182b", ":"),
    "random": ("#7f7f7f", ":"),
}


def plot_patching_curves(results: pd.DataFrame, *, panel: str = "site", line: str = "basis",
                         y: str = "kl", xs: tuple[str, ...] = ("n_features", "edit_magnitude"),
                         title: str | None = None, path: str | os.PathLike[str] | None = None
                         ) -> Figure:
    """One panel per ``panel`` value (e.g. layer), one line per ``line`` value (e.g. basis).

    Rows of the figure are the x variables (number of patched features, edit magnitude);
    the y axis (KL by default) is logarithmic. Saved atomically to ``path`` if given.
    """
    for column in (panel, line, y, *xs):
        if column not in results.columns:
            raise ParameterError(f"results lack column {column!r}",
                                 hint=f"columns: {list(results.columns)}")
    panels = list(dict.fromkeys(results[panel]))
    # exact zeros (a complete basis fully patched) sit on a floor 4 decades below the top
    floor = float(results[y].max()) * 1e-4 if (results[y] > 0).any() else 1e-8
    lines = list(dict.fromkeys(results[line]))
    # a bare Figure with its own Agg canvas: no pyplot, no backend switch, no figure registry
    figure = Figure(figsize=(3.2 * len(panels), 2.8 * len(xs)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(xs), len(panels), squeeze=False, sharey=True)
    for column, panel_value in enumerate(panels):
        subset = results[results[panel] == panel_value]
        for row, x in enumerate(xs):
            ax = axes[row][column]
            for index, line_value in enumerate(lines):
                points = subset[subset[line] == line_value].sort_values(x)
                if points.empty:
                    continue
                colour, style = BASIS_STYLES.get(str(line_value), (f"C{index}", "-"))
                ax.plot(points[x], points[y].clip(lower=floor), style, color=colour,
                        marker="o", markersize=2.5, linewidth=1.4, label=str(line_value))
            ax.set_yscale("log")
            ax.set_ylim(bottom=floor * 0.7)
            if x == "n_features":
                ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3, linewidth=0.5)
            if row == 0:
                ax.set_title(str(panel_value), fontsize=10)
            if column == 0:
                ax.set_ylabel(f"{y} (log)")
            ax.set_xlabel({"n_features": "patched features",
                           "edit_magnitude": "edit magnitude ‖x′ − x̄‖"}.get(x, x), fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    figure.legend(handles, labels, loc="upper center", ncol=len(lines), frameon=False,
                  bbox_to_anchor=(0.5, 0.97))
    if title:
        figure.suptitle(title, y=1.0)
    if path is not None:
        suffix = os.path.splitext(str(path))[1] or ".png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix.lstrip("."), dpi=130, bbox_inches="tight")
    return figure
