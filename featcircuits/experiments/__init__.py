"""Ready-made experiments (IOI patching, parenthesis and IOI circuits): keyword arguments in,
results out. Nothing here reads command-line flags or prints; the command line and the
example scripts convert their flags to these keywords and print the results' ``report()``.
"""

from featcircuits.experiments.circuits import (
    METHODS,
    CircuitResult,
    build_circuit,
    candidate_set,
    circuit_table,
    draw_circuit,
    evaluate_circuit,
    ioi_circuit,
    save_circuit,
)
from featcircuits.experiments.inputs import (
    default_dictionaries,
    default_ioi_prompts,
    dictionary_sets,
    load_ioi_prompts,
    preferred_set,
    resolve_model,
    seeded,
)
from featcircuits.experiments.ioi import IOIResult, run_ioi_patching
from featcircuits.experiments.parens import (
    ParensData,
    parens_circuit,
    parens_data,
    parens_setup,
    rank_parens_features,
    unembedding_readout,
)

__all__ = [
    "METHODS",
    "CircuitResult",
    "IOIResult",
    "ParensData",
    "build_circuit",
    "candidate_set",
    "circuit_table",
    "default_dictionaries",
    "default_ioi_prompts",
    "dictionary_sets",
    "draw_circuit",
    "evaluate_circuit",
    "ioi_circuit",
    "load_ioi_prompts",
    "parens_circuit",
    "parens_data",
    "parens_setup",
    "preferred_set",
    "rank_parens_features",
    "resolve_model",
    "run_ioi_patching",
    "save_circuit",
    "seeded",
    "unembedding_readout",
]
