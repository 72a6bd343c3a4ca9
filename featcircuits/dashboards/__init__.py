"""Feature dashboards: what one dictionary feature responds to (top contexts, activation
histogram) and what it does (direct logit effect, ablation), as data (``data``), figures
(``figure``: matplotlib, SVG) and HTML pages (``page``), and labels for circuit nodes (``labels``)."""

from featcircuits.dashboards.data import (
    HISTOGRAM_BINS,
    HISTOGRAM_TOKEN_GROUPS,
    LOGIT_APPROXIMATION,
    OTHER,
    DashboardContext,
    FeatureDashboard,
    SiteRun,
    collect_site,
    default_texts,
    direct_logit_effect,
    feature_dashboard_data,
)
from featcircuits.dashboards.figure import render_dashboard
from featcircuits.dashboards.labels import (
    context_text,
    dashboard_label,
    graph_dashboard_data,
    import_labels,
    label_features,
)
from featcircuits.dashboards.page import (
    dashboard_html,
    dashboard_page,
    dashboards_for_graph,
    write_dashboard,
)

__all__ = [
    "HISTOGRAM_BINS",
    "HISTOGRAM_TOKEN_GROUPS",
    "LOGIT_APPROXIMATION",
    "OTHER",
    "DashboardContext",
    "FeatureDashboard",
    "SiteRun",
    "collect_site",
    "context_text",
    "dashboard_html",
    "dashboard_label",
    "dashboard_page",
    "dashboards_for_graph",
    "default_texts",
    "direct_logit_effect",
    "feature_dashboard_data",
    "graph_dashboard_data",
    "import_labels",
    "label_features",
    "render_dashboard",
    "write_dashboard",
]
