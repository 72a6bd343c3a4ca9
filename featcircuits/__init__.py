"""featcircuits: sparse-dictionary feature patching and feature circuits on nnsight.

The public API is re-exported here; modules and names starting with ``_`` are private.
"""

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
from featcircuits.errors import *  # noqa: F401,F403
from featcircuits.errors import __all__ as _error_names
from featcircuits.models import load_model, zoo_names, zoo_path
from featcircuits.sites import Site, all_sites, d_model, num_layers

__version__ = "0.1.0"

__all__ = [
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
    "save_dictionary",
    "load_dictionary",
    "load_dictionaries",
    "check_dictionary_fits",
]
