"""One exception hierarchy for everything featcircuits raises on bad input.

Every message names the offending value and says how to fix it. Catch
``FeatCircuitsError`` to handle any of them; the specific classes also derive from
the matching builtin (``ValueError``, ``OSError``, ``KeyError``) so generic handlers
keep working.
"""

from __future__ import annotations


class FeatCircuitsError(Exception):
    """Base class of every error featcircuits raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ModelLoadError(FeatCircuitsError, OSError):
    """A model checkpoint could not be found, reached or read."""


class SiteError(FeatCircuitsError, ValueError):
    """A site name is malformed, out of range, or the architecture is unsupported."""


class DictionaryError(FeatCircuitsError, ValueError):
    """A dictionary is malformed or does not fit the site/model it is used with."""


class DictionaryLoadError(DictionaryError, OSError):
    """A dictionary file or folder is missing, truncated, or of an unknown format."""


class WidthMismatchError(DictionaryError):
    """Two widths that must agree do not (dictionary d_in vs site d_model, ...)."""


class FeatureIdError(FeatCircuitsError, ValueError):
    """Feature ids out of range, duplicated, or of the wrong type."""


class PromptError(FeatCircuitsError, ValueError):
    """Prompts are empty, tokenize to mismatched lengths, or answers are not one token."""


class NonFiniteError(FeatCircuitsError, ValueError):
    """NaN or infinite values where finite numbers are required."""


class ParameterError(FeatCircuitsError, ValueError):
    """A numeric or categorical argument is out of its allowed range."""


class GraphError(FeatCircuitsError, ValueError):
    """A circuit graph is malformed or of an incompatible format version."""


class TrainingError(FeatCircuitsError, RuntimeError):
    """Training cannot start or continue (empty data, NaN loss, checkpoint mismatch)."""


class OutputError(FeatCircuitsError, OSError):
    """An output path cannot be written."""


class CircuitWarning(UserWarning):
    """A circuit came out empty or cut off from its target (a threshold too high); the
    message names the threshold and a value that keeps the target's strongest path."""


__all__ = [
    "CircuitWarning",
    "DictionaryError",
    "DictionaryLoadError",
    "FeatCircuitsError",
    "FeatureIdError",
    "GraphError",
    "ModelLoadError",
    "NonFiniteError",
    "OutputError",
    "ParameterError",
    "PromptError",
    "SiteError",
    "TrainingError",
    "WidthMismatchError",
]
