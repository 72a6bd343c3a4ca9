"""featcircuits: sparse-dictionary feature patching and feature circuits on nnsight.

The top level holds the names for the three jobs (about 25, plus the error classes):

* load a model, dictionaries and prompts: ``load_model``, ``zoo_path``, ``trace``,
  ``to_model``, ``remote_mode``, ``Site``, ``Dictionary``, ``load_dictionary``,
  ``load_dictionaries``, ``save_dictionary``, ``read_prompts``, ``RunSettings``;
* patch and search: ``PatchingExperiment``, ``backward_elimination``,
  ``attribution_curve``, ``compare_bases``;
* discover, evaluate, save and render circuits: ``circuit_runs``, ``acdc_circuit``,
  ``attribution_circuit``, ``hybrid_circuit``, ``faithfulness``, ``faithfulness_curve``,
  ``read_graph``, ``write_json``, ``threshold``, ``top_k_edges``, ``prune``,
  ``render_circuit``, ``to_html``.

Everything else lives in its subpackage, each with an ``__all__``: ``featcircuits.model``,
``.dictionaries``, ``.tasks``, ``.engine``, ``.patching``, ``.circuits``, ``.graph``,
``.render``, ``.dashboards``, ``.experiments``, ``.train`` (``.cli`` is the command line,
which the library never imports). See ``docs/architecture.md`` and ``docs/api.md``.
"""

# subpackages reachable as attributes: fc.dictionaries.SparseAutoencoder, fc.graph.read_json
from featcircuits import (  # noqa: F401 -- subpackages, as attributes
    circuits,
    dictionaries,
    engine,
    graph,
    model,
    patching,
    render,
    tasks,
)
from featcircuits.circuits import (
    acdc_circuit,
    attribution_circuit,
    circuit_runs,
    faithfulness,
    faithfulness_curve,
    hybrid_circuit,
)
from featcircuits.dictionaries import (
    Dictionary,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from featcircuits.engine import RunSettings
from featcircuits.errors import *
from featcircuits.errors import __all__ as _error_names
from featcircuits.graph import prune, read_graph, threshold, top_k_edges, write_json
from featcircuits.model import Site, load_model, remote_mode, to_model, trace, zoo_path
from featcircuits.patching import (
    PatchingExperiment,
    attribution_curve,
    backward_elimination,
    compare_bases,
)
from featcircuits.render import render_circuit, to_html
from featcircuits.tasks import read_prompts

__version__ = "0.1.0"

__all__ = [  # noqa: PLE0604 -- the error names are strings
    *_error_names,
    # load
    "load_model",
    "zoo_path",
    "trace",
    "to_model",
    "remote_mode",
    "Site",
    "Dictionary",
    "load_dictionary",
    "load_dictionaries",
    "save_dictionary",
    "read_prompts",
    "RunSettings",
    # patch and search
    "PatchingExperiment",
    "backward_elimination",
    "attribution_curve",
    "compare_bases",
    # circuits
    "circuit_runs",
    "acdc_circuit",
    "attribution_circuit",
    "hybrid_circuit",
    "faithfulness",
    "faithfulness_curve",
    "read_graph",
    "write_json",
    "threshold",
    "top_k_edges",
    "prune",
    "render_circuit",
    "to_html",
]
