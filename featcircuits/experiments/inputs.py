"""Inputs of the ready-made experiments: the model (by name or already loaded), dictionary
sets from a folder, the bundled IOI prompt pairs, and a seeded torch generator scope.

These are plain library functions (keyword arguments in, values out); the command line
only converts its flags to their arguments.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import DictionaryLoadError, ParameterError
from featcircuits.model.loading import load_model, model_name, resolve_checkpoint, to_model
from featcircuits.model.sites import Site
from featcircuits.tasks.prompts import read_prompts

__all__ = [
    "ModelSpec",
    "default_dictionaries",
    "default_ioi_prompts",
    "dictionary_sets",
    "load_ioi_prompts",
    "preferred_set",
    "resolve_model",
    "seeded",
]

ModelSpec = str | os.PathLike | Any
"""A bundled name, checkpoint folder or hub id (loaded with ``load_model``), or a model
already loaded with ``load_model``."""


def resolve_model(model: ModelSpec, *, device: str = "cpu", dtype: str | None = None,
                  remote: bool | str = False) -> tuple[Any, str]:
    """``(nnsight model, its name)``: ``model`` loaded with ``load_model(model, device=...,
    dtype=..., remote=...)`` when it is a name or path, else ``model`` itself (the loading
    keywords are then ignored) and ``model_name(model)``."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device, dtype=dtype, remote=remote), str(model)
    return model, model_name(model)


def default_ioi_prompts() -> Path:
    """The bundled held-out IOI prompt pairs (``featcircuits/data/ioi/prompts.jsonl``)."""
    from featcircuits.tasks.ioi import default_prompts_path

    return Path(default_prompts_path())


def dictionary_sets(folder: str | os.PathLike[str], model=None, *,
                    names: list[str] | None = None) -> dict[str, dict[str, Dictionary]]:
    """Load ``{set name: {site: Dictionary}}`` from a folder of sets (``<folder>/<set>/<site>``).

    Args:
        folder: holds one subfolder per set, each with one subfolder per site.
        model: passed to ``load_dictionaries`` (checks that the dictionaries fit it).
        names: the sets to load (default: every subfolder, sorted).

    Raises:
        DictionaryLoadError: the folder does not exist, or ``names`` names a missing set.
    """
    from featcircuits.dictionaries.io import load_dictionaries

    root = Path(folder)
    if not root.is_dir():
        raise DictionaryLoadError(f"dictionary folder {str(folder)!r} does not exist",
                                  hint="pass a folder of dictionary sets, e.g. "
                                  "featcircuits/zoo/tiny/dictionaries")
    available = sorted(p.name for p in root.iterdir() if p.is_dir())
    if names:
        unknown = [name for name in names if name not in available]
        if unknown:
            raise DictionaryLoadError(f"no dictionary sets {unknown} in {str(root)!r}",
                                      hint=f"available: {', '.join(available)}")
    return {name: load_dictionaries(root / name, model=model)
            for name in (names or available)}


def preferred_set(names) -> str:
    """``sae-sparse`` if present, else the first SAE set, else the first set (sorted)."""
    names = sorted(names)
    if not names:
        raise DictionaryLoadError("no dictionary sets to choose from",
                                  hint="pass a folder holding <set>/<site>/ subfolders")
    if "sae-sparse" in names:
        return "sae-sparse"
    return next((name for name in names if name.startswith("sae")), names[0])


def default_dictionaries(model_name: str, model, set_name: str | None = None,
                         folder: str | os.PathLike[str] | None = None, *,
                         progress: bool = True) -> tuple[str, dict[str, Dictionary]]:
    """``(set name, {site: Dictionary})`` from ``<checkpoint>/dictionaries/<set>/`` (or
    ``folder``, or a hub spec such as ``dictionary_learning:pythia-70m-deduped``), cast to
    ``model``'s dtype and device. Unless ``set_name`` is given: ``preferred_set`` of the
    sets found (``sae-sparse``, else the first SAE set). ``progress=False`` hides the bar
    shown while a spec's files are unpacked."""
    from featcircuits.dictionaries.hub import is_spec
    from featcircuits.dictionaries.io import load_dictionaries

    if is_spec(folder):  # e.g. dictionary_learning:pythia-70m-deduped (docs/real-models.md)
        return str(folder), load_dictionaries(folder, model=model, progress=progress)
    if folder is None:
        checkpoint = Path(resolve_checkpoint(model_name))
        folder = checkpoint / "dictionaries"
    root = Path(folder)
    if not root.is_dir():
        raise DictionaryLoadError(f"no dictionary folder {str(root)!r}",
                                  hint="pass dictionaries=FOLDER holding <set>/<site>/")
    sets = dictionary_sets(root, model, names=[set_name] if set_name else None)
    if not sets:
        raise DictionaryLoadError(f"no dictionary sets in {str(root)!r}")
    name = set_name or preferred_set(sets)
    return name, {str(Site.parse(site)): to_model(d, model) for site, d in sets[name].items()}


def load_ioi_prompts(path: str | os.PathLike[str] | None = None, corruption: str = "abc",
                     n_prompts: int = 16, seed: int = 0) -> pd.DataFrame:
    """Prompt pairs from ``path`` (default: ``default_ioi_prompts()``) whose
    ``corruption`` column equals ``corruption`` (``"all"``: every row), ``n_prompts`` of
    them drawn with ``seed`` when there are more."""
    frame = read_prompts(path or default_ioi_prompts())
    if "corruption" in frame.columns and corruption != "all":
        frame = frame[frame["corruption"] == corruption]
        if frame.empty:
            raise ParameterError(f"no prompt pairs with corruption {corruption!r}",
                                 hint="use corruption abc, flip or all (--corruption)")
    if n_prompts < 1:
        raise ParameterError(f"n_prompts (--n-prompts) must be >= 1, got {n_prompts}")
    if len(frame) > n_prompts:
        frame = frame.sample(n=n_prompts, random_state=seed)
    return frame.reset_index(drop=True)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators seeded by ``seed``; their previous
    state is restored afterwards (``torch.random.fork_rng``), so an experiment leaves no
    trace in the caller's random stream."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
