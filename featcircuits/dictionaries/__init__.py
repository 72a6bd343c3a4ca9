"""Dictionaries: every basis (SAE, PCA, ICA, neurons, random) behind one interface."""

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.bases import (
    ICABasis,
    LinearBasis,
    NeuronBasis,
    PCABasis,
    RandomBasis,
)
from featcircuits.dictionaries.centered import CenteredSparseAutoencoder
from featcircuits.dictionaries.io import (
    check_dictionary_fits,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.dictionaries.transcoder import Transcoder, load_transcoder, save_transcoder

__all__ = [
    "CenteredSparseAutoencoder",
    "Dictionary",
    "ICABasis",
    "LinearBasis",
    "NeuronBasis",
    "PCABasis",
    "RandomBasis",
    "SparseAutoencoder",
    "TokenBasis",
    "Transcoder",
    "check_dictionary_fits",
    "load_dictionaries",
    "load_dictionary",
    "load_transcoder",
    "save_dictionary",
    "save_transcoder",
]
