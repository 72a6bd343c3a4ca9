"""Dictionaries: every basis (SAE, PCA, ICA, neurons, random) behind one interface."""

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.bases import (
    ICABasis,
    LinearBasis,
    NeuronBasis,
    PCABasis,
    RandomBasis,
)
from featcircuits.dictionaries.io import (
    check_dictionary_fits,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from featcircuits.dictionaries.sae import SparseAutoencoder

__all__ = [
    "Dictionary",
    "ICABasis",
    "LinearBasis",
    "NeuronBasis",
    "PCABasis",
    "RandomBasis",
    "SparseAutoencoder",
    "check_dictionary_fits",
    "load_dictionaries",
    "load_dictionary",
    "save_dictionary",
]
