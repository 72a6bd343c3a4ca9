"""Colours and stroke widths shared by every renderer (matplotlib, DOT, HTML).

Sign convention, everywhere: **blue = positive, red = negative** (the two ends of the
diverging ``RdBu`` colormap, centred at 0). Node fill encodes the node's ``effect``;
edge colour encodes the sign of ``weight`` and its width/opacity encode ``|weight|``.
"""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib
import matplotlib.colors as mcolors

EFFECT_CMAP_NAME = "RdBu"
POSITIVE_COLOR = "#2166ac"  # the blue end of RdBu
NEGATIVE_COLOR = "#b2182b"  # the red end of RdBu
MISSING_FILL = "#d9d9d9"  # nodes whose effect is None
ERROR_OUTLINE = "#555555"
NODE_OUTLINE = "#222222"

MIN_EDGE_WIDTH = 0.6
MAX_EDGE_WIDTH = 3.2
MIN_EDGE_ALPHA = 0.25
MAX_EDGE_ALPHA = 0.9


def effect_cmap() -> mcolors.Colormap:
    return matplotlib.colormaps[EFFECT_CMAP_NAME]


def symmetric_limit(values: Iterable[float | None]) -> float:
    """Largest ``|value|`` (ignoring None), or 1.0 when there is none or it is 0."""
    finite = [abs(v) for v in values if v is not None]
    peak = max(finite, default=0.0)
    return peak if peak > 0 else 1.0


def effect_norm(limit: float) -> mcolors.Normalize:
    """Colour normalisation centred at 0 spanning ``[-limit, limit]``."""
    return mcolors.Normalize(vmin=-limit, vmax=limit)


def effect_rgba(effect: float | None, limit: float) -> tuple[float, float, float, float]:
    """Fill colour of a node with this ``effect`` on a scale of ``±limit``."""
    if effect is None:
        return mcolors.to_rgba(MISSING_FILL)
    return tuple(effect_cmap()(effect_norm(limit)(effect)))  # type: ignore[return-value]


def effect_hex(effect: float | None, limit: float) -> str:
    return mcolors.to_hex(effect_rgba(effect, limit))


def text_color_on(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads better on ``rgba``."""
    red, green, blue = rgba[:3]
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    return "#000000" if luminance > 0.5 else "#ffffff"


def edge_color(weight: float) -> str:
    return POSITIVE_COLOR if weight >= 0 else NEGATIVE_COLOR


def edge_strength(weight: float, limit: float) -> float:
    """``|weight| / limit`` clipped to [0, 1]."""
    return min(abs(weight) / limit, 1.0) if limit > 0 else 0.0


def edge_width(weight: float, limit: float) -> float:
    return MIN_EDGE_WIDTH + (MAX_EDGE_WIDTH - MIN_EDGE_WIDTH) * edge_strength(weight, limit)


def edge_alpha(weight: float, limit: float) -> float:
    return MIN_EDGE_ALPHA + (MAX_EDGE_ALPHA - MIN_EDGE_ALPHA) * edge_strength(weight, limit)
