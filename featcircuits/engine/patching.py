"""Moved: kept only so that ``featcircuits/__init__.py`` imports until it is rewritten.

The edit primitives live in ``featcircuits.engine.edits``, ``RunCache`` in
``featcircuits.engine.cache`` and ``PatchingExperiment`` in
``featcircuits.patching.experiment``. Import them from there; this module is deleted once
``featcircuits/__init__.py`` does.
"""

from featcircuits.engine.cache import RunCache
from featcircuits.engine.edits import patch_error, patch_site
from featcircuits.patching.experiment import PatchingExperiment

__all__ = ["PatchingExperiment", "RunCache", "patch_error", "patch_site"]
