"""Sub-rank-one feature patching experiments, searches and basis comparisons.

``PatchingExperiment`` (``experiment``) patches feature sets into the corrupted run of
prompt pairs, many sets per forward pass, on the intervention engine
(``featcircuits.engine``); ``search`` finds small sets that restore clean behaviour
(backward elimination, attribution); ``compare`` runs both over many bases.
"""

from featcircuits.patching.compare import (
    basis_statistics,
    compare_bases,
    reference_bases,
    summarize_comparison,
)
from featcircuits.patching.experiment import FeatureSet, PatchingExperiment
from featcircuits.patching.search import (
    attribution_curve,
    attribution_scores,
    backward_elimination,
    default_taus,
    features_needed,
    size_grid,
)

__all__ = [
    "FeatureSet",
    "PatchingExperiment",
    "attribution_curve",
    "attribution_scores",
    "backward_elimination",
    "basis_statistics",
    "compare_bases",
    "default_taus",
    "features_needed",
    "reference_bases",
    "size_grid",
    "summarize_comparison",
]
