"""featcircuits: sparse-dictionary feature patching and feature circuits on nnsight."""

from featcircuits.errors import *  # noqa: F401,F403
from featcircuits.errors import __all__ as _error_names

__version__ = "0.1.0"

__all__ = [*_error_names]
