"""Feature circuits: targets, discovery (ACDC, attribution, hybrid) and faithfulness.

Modules: ``targets`` (what a circuit explains), ``nodes`` (node keys, ids, candidates,
thresholds), ``ablation`` (exact ablation effects), ``attribution`` (gradient estimates),
``build`` (graphs from nodes and edges), ``discovery`` (``acdc_circuit``,
``attribution_circuit``, ``hybrid_circuit``, ``feature_graph``), ``compare``
(``all_edge_weights``) and ``faithfulness``; ``carried_paths`` (integrated-gradient paths
of cross-layer transcoder sites). The cached runs they work on are
``featcircuits.engine.runs.CircuitRuns``.
"""

from featcircuits.circuits.ablation import ablation_effects, exact_node_effects, verify_edges
from featcircuits.circuits.attribution import (
    attribution_edges,
    attribution_gradients,
    gradient_edges,
    node_attributions,
)
from featcircuits.circuits.build import build_graph
from featcircuits.circuits.compare import all_edge_weights
from featcircuits.circuits.discovery import (
    CircuitOptions,
    acdc_circuit,
    attribution_circuit,
    circuit_runs,
    feature_graph,
    hybrid_circuit,
)
from featcircuits.circuits.faithfulness import (
    EdgeSpec,
    circuit_masks,
    edge_spec,
    evaluate_edge_specs,
    evaluate_node_sets,
    faithfulness,
    faithfulness_curve,
    graph_ablation,
    node_masks,
)
from featcircuits.circuits.nodes import (
    ERROR,
    Node,
    candidate_nodes,
    graph_nodes,
    node_id,
    upstream_sites,
)
from featcircuits.circuits.targets import (
    FeatureTarget,
    LogitTarget,
    MetricTarget,
    Target,
    resolve_target,
)
from featcircuits.engine.runs import CircuitRuns

__all__ = [
    "ERROR",
    "CircuitOptions",
    "CircuitRuns",
    "EdgeSpec",
    "FeatureTarget",
    "LogitTarget",
    "MetricTarget",
    "Node",
    "Target",
    "ablation_effects",
    "acdc_circuit",
    "all_edge_weights",
    "attribution_circuit",
    "attribution_edges",
    "attribution_gradients",
    "build_graph",
    "candidate_nodes",
    "circuit_masks",
    "circuit_runs",
    "edge_spec",
    "evaluate_edge_specs",
    "evaluate_node_sets",
    "exact_node_effects",
    "faithfulness",
    "faithfulness_curve",
    "feature_graph",
    "gradient_edges",
    "graph_ablation",
    "graph_nodes",
    "hybrid_circuit",
    "node_attributions",
    "node_id",
    "node_masks",
    "resolve_target",
    "upstream_sites",
    "verify_edges",
]
