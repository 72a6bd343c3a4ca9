"""The format registry: architecture name → the class that reads and writes it.

``FORMATS`` is a constant, built once from the classes below and read-only
(``types.MappingProxyType``): no import side effects fill it, nothing can add to it at run
time, so what a file loads as never depends on which modules were imported. Adding a
format is one ``DictionaryFormat`` subclass plus one entry in ``_CLASSES``; ``load_dictionary``
and ``save_dictionary`` need no change.

Keys are architectures as the files name them: SAELens' ``cfg.json`` ``architecture``
(``standard``, ``topk``, ``jumprelu``), featcircuits' linear bases (``featcircuits-<kind>``),
dictionary_learning's class names and circuit-tracer's ``transcoder``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.dictionary_learning import (
    AutoEncoderFormat,
    AutoEncoderTopKFormat,
    JumpReluAutoEncoderFormat,
)
from featcircuits.dictionaries.dictionary_learning_classes import (
    AutoEncoderNewFormat,
    BatchTopKSAEFormat,
    GatedAutoEncoderFormat,
    MatryoshkaBatchTopKSAEFormat,
)
from featcircuits.dictionaries.formats import DictionaryFormat
from featcircuits.dictionaries.linear_formats import (
    ICAFormat,
    LinearFormat,
    NeuronFormat,
    PCAFormat,
    RandomFormat,
)
from featcircuits.dictionaries.saelens import JumpReluSae, StandardSae, TopKSae
from featcircuits.dictionaries.saelens_gated import GatedSae
from featcircuits.dictionaries.saelens_transcoders import (
    SaelensJumpReluSkipTranscoder,
    SaelensJumpReluTranscoder,
    SaelensPlainTranscoder,
    SaelensSkipTranscoder,
)
from featcircuits.dictionaries.transcoder import TranscoderFormat
from featcircuits.errors import DictionaryLoadError

_CLASSES: tuple[type[DictionaryFormat], ...] = (
    StandardSae,
    TopKSae,
    JumpReluSae,
    GatedSae,
    SaelensPlainTranscoder,
    SaelensSkipTranscoder,
    SaelensJumpReluTranscoder,
    SaelensJumpReluSkipTranscoder,
    LinearFormat,
    NeuronFormat,
    RandomFormat,
    PCAFormat,
    ICAFormat,
    AutoEncoderFormat,
    AutoEncoderTopKFormat,
    JumpReluAutoEncoderFormat,
    GatedAutoEncoderFormat,
    AutoEncoderNewFormat,
    BatchTopKSAEFormat,
    MatryoshkaBatchTopKSAEFormat,
    TranscoderFormat,
)

FORMATS: Mapping[str, type[DictionaryFormat]] = MappingProxyType(
    {cls.name: cls for cls in _CLASSES})
"""Every architecture featcircuits reads and writes, by name (read-only)."""


def dictionary_format(architecture: Any, where: str | Path | None = None) -> type[DictionaryFormat]:
    """The format class of ``architecture``.

    Raises:
        DictionaryLoadError: an unknown architecture (named, with the known ones); ``where``
            (the file read) prefixes the message.
    """
    if isinstance(architecture, str) and architecture in FORMATS:
        return FORMATS[architecture]
    prefix = "" if where is None else f"{str(where)!r}: "
    raise DictionaryLoadError(
        f"{prefix}unknown dictionary architecture {architecture!r}",
        hint=f"featcircuits reads {', '.join(FORMATS)}; a new one is a DictionaryFormat "
        "subclass plus an entry in featcircuits.dictionaries.registry")


def format_of(dictionary: Dictionary) -> type[DictionaryFormat]:
    """The format ``save_dictionary`` writes ``dictionary`` in (its ``architecture``).

    Raises:
        DictionaryLoadError: the dictionary has no file format (a ``TokenBasis``, a
            subclass of ``Dictionary`` of your own) or an unregistered one.
    """
    architecture = dictionary.architecture
    if architecture is None:
        raise DictionaryLoadError(
            f"cannot save a {type(dictionary).__name__}: it has no file format "
            "(architecture None)",
            hint="subclass SparseAutoencoder or LinearBasis, or save its tensors yourself; "
            f"the formats are {', '.join(FORMATS)}")
    return dictionary_format(architecture)


__all__ = ["FORMATS", "dictionary_format", "format_of"]
