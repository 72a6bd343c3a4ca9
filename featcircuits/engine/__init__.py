"""The one intervention engine: cached runs, batched traces over rows, edit primitives.

* ``edits``: ``patch_site``, ``patch_error``, ``add_carried`` (inside a trace), ``input_site_of``,
  ``check_finite_activations``;
* ``cache``: ``RunCache`` (clean and corrupted runs of prompt pairs; ``RunActivations``
  reads a block of one run's activations, kept or recomputed), ``SiteFeatures``
  (features encoded when read), ``select_features`` (one block of them) and
  ``feature_blocks`` (blocks of a site's features within a budget);
* ``runs``: ``CircuitRuns`` (the clean run circuit discovery works on); ``run_features``
  its features and ablation sources, encoded on demand, and the scans over them;
* ``circuit_trace``: ``trace_rows`` (many edited copies in one pass), ``SiteOps``, ``NodeRead``;
* ``carried``: cross-layer transcoders in circuit runs (one node, several written sites);
* ``sources``: the one vocabulary of sources and ablations, ``resample_index``,
  ``position_mask``;
* ``memory``: budgets and the one per-row estimate ``bytes_per_row``;
* ``tiling``: whether the layers before a site may run once per prompt (``PrefixTiling``);
* ``settings``: ``RunSettings`` (memory budget, rows per pass, seed, progress),
  ``check_seed`` / ``MAX_SEED`` (the one seed range).

``PatchingExperiment`` is a client of the engine: ``featcircuits.patching``.
"""

from featcircuits.engine.cache import (
    RunActivations,
    RunCache,
    SiteFeatures,
    feature_blocks,
    select_features,
)
from featcircuits.engine.circuit_trace import NodeRead, SiteOps, TraceResult, trace_rows
from featcircuits.engine.edits import (
    add_carried,
    check_finite_activations,
    input_site_of,
    patch_error,
    patch_site,
)
from featcircuits.engine.memory import (
    bytes_per_row,
    default_max_memory,
    parse_memory,
    rows_per_chunk,
    split_rows,
)
from featcircuits.engine.runs import CircuitRuns
from featcircuits.engine.settings import MAX_SEED, RunSettings, check_seed
from featcircuits.engine.sources import (
    ABLATIONS,
    PATCHING_SOURCES,
    SOURCES,
    check_source,
    position_mask,
    resample_index,
)
from featcircuits.engine.tiling import PrefixTiling, is_tiling_mismatch, tiling_possible

__all__ = [
    "ABLATIONS",
    "MAX_SEED",
    "PATCHING_SOURCES",
    "SOURCES",
    "CircuitRuns",
    "NodeRead",
    "PrefixTiling",
    "RunActivations",
    "RunCache",
    "RunSettings",
    "SiteFeatures",
    "SiteOps",
    "TraceResult",
    "add_carried",
    "bytes_per_row",
    "check_finite_activations",
    "check_seed",
    "check_source",
    "default_max_memory",
    "feature_blocks",
    "input_site_of",
    "is_tiling_mismatch",
    "parse_memory",
    "patch_error",
    "patch_site",
    "position_mask",
    "resample_index",
    "rows_per_chunk",
    "select_features",
    "split_rows",
    "tiling_possible",
    "trace_rows",
]
