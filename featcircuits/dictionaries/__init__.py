"""Dictionaries: every basis (SAE, PCA, ICA, neurons, random, tokens, transcoders) behind one
interface (``Dictionary``; a cross-layer transcoder is one per read layer), and the files they are read from and written to: one
``DictionaryFormat`` class per architecture, in the constant table ``FORMATS``."""

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.bases import (
    ICABasis,
    LinearBasis,
    NeuronBasis,
    PCABasis,
    RandomBasis,
)
from featcircuits.dictionaries.centered import CenteredSparseAutoencoder
from featcircuits.dictionaries.cross_layer import (
    CrossLayerFeatures,
    CrossLayerTranscoder,
    load_cross_layer_transcoder,
)
from featcircuits.dictionaries.formats import DictionaryFormat, DictionaryState
from featcircuits.dictionaries.gated import GatedSparseAutoencoder
from featcircuits.dictionaries.io import (
    check_dictionary_fits,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from featcircuits.dictionaries.normalized import NormalizedSparseAutoencoder
from featcircuits.dictionaries.registry import FORMATS, dictionary_format, format_of
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.dictionaries.transcoder import Transcoder, load_transcoder, save_transcoder

__all__ = [
    "FORMATS",
    "CenteredSparseAutoencoder",
    "CrossLayerFeatures",
    "CrossLayerTranscoder",
    "Dictionary",
    "DictionaryFormat",
    "DictionaryState",
    "GatedSparseAutoencoder",
    "ICABasis",
    "LinearBasis",
    "NeuronBasis",
    "NormalizedSparseAutoencoder",
    "PCABasis",
    "RandomBasis",
    "SparseAutoencoder",
    "TokenBasis",
    "Transcoder",
    "check_dictionary_fits",
    "dictionary_format",
    "format_of",
    "load_cross_layer_transcoder",
    "load_dictionaries",
    "load_dictionary",
    "load_transcoder",
    "save_dictionary",
    "save_transcoder",
]
