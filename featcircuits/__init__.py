"""featcircuits: sparse-dictionary feature patching and feature circuits on nnsight.

The public API is re-exported here; modules and names starting with ``_`` are private.
"""

from featcircuits.circuits.discovery import (
    acdc_circuit,
    attribution_circuit,
    circuit_runs,
    feature_graph,
    hybrid_circuit,
    node_attributions,
)
from featcircuits.circuits.faithfulness import faithfulness, faithfulness_curve
from featcircuits.circuits.targets import FeatureTarget, LogitTarget, MetricTarget
from featcircuits.dictionaries import (
    Dictionary,
    ICABasis,
    LinearBasis,
    NeuronBasis,
    PCABasis,
    RandomBasis,
    SparseAutoencoder,
    check_dictionary_fits,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from featcircuits.dictionaries.centered import CenteredSparseAutoencoder
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.dictionaries.transcoder import Transcoder, load_transcoder, save_transcoder
from featcircuits.engine.cache import RunCache
from featcircuits.engine.edits import patch_error, patch_site
from featcircuits.engine.runs import CircuitRuns
from featcircuits.errors import *
from featcircuits.errors import __all__ as _error_names
from featcircuits.graph.io import (
    edges_frame,
    nodes_frame,
    read_graphml,
    read_json,
    write_graphml,
    write_json,
    write_tables,
)
from featcircuits.graph.ops import make_node_id, parse_node_id, reaching, threshold, top_k_edges
from featcircuits.model.loading import load_model, zoo_names, zoo_path
from featcircuits.model.metrics import answer_prob, kl_divergence, logit_diff
from featcircuits.model.sites import Site, all_sites, d_model, num_layers
from featcircuits.patching.compare import compare_bases, reference_bases, summarize_comparison
from featcircuits.patching.experiment import PatchingExperiment
from featcircuits.patching.search import (
    attribution_curve,
    attribution_scores,
    backward_elimination,
    default_taus,
    features_needed,
)
from featcircuits.render import (
    plot_patching_curves,
    render_circuit,
    to_dot,
    to_html,
    to_neuronpedia_json,
    write_dot,
    write_neuronpedia_json,
)
from featcircuits.tasks.prompts import PromptPairs, read_prompts, tokenize_prompts

__version__ = "0.1.0"

__all__ = [  # noqa: PLE0604 -- the error names are strings
    *_error_names,
    "load_model",
    "zoo_names",
    "zoo_path",
    "Site",
    "all_sites",
    "d_model",
    "num_layers",
    "Dictionary",
    "SparseAutoencoder",
    "LinearBasis",
    "NeuronBasis",
    "PCABasis",
    "ICABasis",
    "RandomBasis",
    "TokenBasis",
    "CenteredSparseAutoencoder",
    "Transcoder",
    "load_transcoder",
    "save_transcoder",
    "save_dictionary",
    "load_dictionary",
    "load_dictionaries",
    "check_dictionary_fits",
    "read_prompts",
    "tokenize_prompts",
    "PromptPairs",
    "logit_diff",
    "kl_divergence",
    "answer_prob",
    "patch_site",
    "patch_error",
    "RunCache",
    "PatchingExperiment",
    "backward_elimination",
    "attribution_scores",
    "attribution_curve",
    "default_taus",
    "features_needed",
    "compare_bases",
    "reference_bases",
    "summarize_comparison",
    "plot_patching_curves",
    "render_circuit",
    "to_dot",
    "write_dot",
    "to_html",
    "to_neuronpedia_json",
    "write_neuronpedia_json",
    "CircuitRuns",
    "circuit_runs",
    "FeatureTarget",
    "LogitTarget",
    "MetricTarget",
    "node_attributions",
    "make_node_id",
    "parse_node_id",
    "acdc_circuit",
    "attribution_circuit",
    "hybrid_circuit",
    "feature_graph",
    "faithfulness",
    "faithfulness_curve",
    "threshold",
    "top_k_edges",
    "reaching",
    "read_json",
    "write_json",
    "read_graphml",
    "write_graphml",
    "nodes_frame",
    "edges_frame",
    "write_tables",
]
