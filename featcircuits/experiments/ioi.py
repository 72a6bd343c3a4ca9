"""The IOI feature-patching experiment: how few features of each basis restore behaviour?

``run_ioi_patching`` compares the bundled (or given) dictionary sets with the neuron and a
random basis at residual-stream sites, on IOI prompt pairs; it returns an ``IOIResult``
and, when ``out`` is given, writes ``results.csv`` and ``curves.png`` there. The example
script and ``featcircuits ioi`` are thin wrappers that print ``IOIResult.report()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from featcircuits.engine.settings import RunSettings
from featcircuits.errors import DictionaryLoadError
from featcircuits.experiments.inputs import (
    ModelSpec,
    dictionary_sets,
    load_ioi_prompts,
    resolve_model,
    seeded,
)
from featcircuits.model.loading import resolve_checkpoint, to_model
from featcircuits.model.sites import Site, num_layers
from featcircuits.patching.compare import compare_bases, reference_bases, summarize_comparison
from featcircuits.patching.search import default_taus
from featcircuits.writes import atomic_files, ensure_writable_dir

__all__ = ["IOIResult", "run_ioi_patching"]

REFERENCE_BASES = ("neuron", "random")


@dataclass
class IOIResult:
    """What ``run_ioi_patching`` returns.

    Attributes:
        results: one row per (site, basis, point of the curve), as ``compare_bases``.
        summary: ``summarize_comparison(results)``: features needed per (site, basis).
        prompts: the prompt pairs used.
        model_name: the model's name as given (or ``model_name(model)``).
        paths: files written (``{"results": .../results.csv, "curves": .../curves.png}``;
            empty without ``out``).
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    prompts: pd.DataFrame
    model_name: str
    paths: dict[str, Path] = field(default_factory=dict)

    def write(self, out: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``results.csv`` (feature ids space-separated) and ``curves.png`` into folder
        ``out`` as one set (``featcircuits.writes.atomic_files``: a kill or a full disk
        leaves the previous pair, never a new CSV beside an old plot); sets and returns
        ``paths``."""
        from featcircuits.render.curves import plot_patching_curves

        folder = Path(out)
        results = self.results
        csv = results.assign(features=results["features"].map(
            lambda ids: " ".join(map(str, ids))))
        with atomic_files(folder) as files:
            csv.to_csv(files.path("results.csv"), index=False, float_format="%.6g")
            plot_patching_curves(results, panel="site", line="basis",
                                 path=files.path("curves.png"),
                                 title=f"IOI patching on {self.model_name}: KL(clean ‖ "
                                 "patched) at the answer")
        self.paths = {"results": folder / "results.csv", "curves": folder / "curves.png"}
        return self.paths


    def report(self) -> str:
        """The summary as text: baselines, then a site × basis table of the features needed
        to bring KL under 10% of the unpatched KL (edit magnitude in brackets)."""
        first = self.results.iloc[0]
        lines = [(f"{len(self.prompts)} prompt pairs; logit diff clean "
                 f"{first['logit_diff_clean']:.2f}, corrupt {first['logit_diff_corrupt']:.2f}; "
                 f"KL(clean ‖ corrupt) {first['kl_corrupt']:.3f}"),
                 ("features needed to bring KL under 10% of the unpatched KL "
                 "(edit magnitude at that point):")]
        summary = self.summary
        table = summary.pivot(index="site", columns="basis", values="features_needed")
        edits = summary.pivot(index="site", columns="basis", values="edit_magnitude")
        order = list(dict.fromkeys(summary["basis"]))
        sites = sorted(table.index, key=lambda name: Site.parse(name).depth)
        lines.append(f"{'site':<12}" + "".join(f"{name:>16}" for name in order))
        for site in sites:
            cells = []
            for name in order:
                needed, edit = table.loc[site, name], edits.loc[site, name]
                cells.append(f"{'—':>16}" if pd.isna(needed)
                             else f"{int(needed):>7} ({edit:6.2f})")
            lines.append(f"{site:<12}" + "".join(cells))
        return "\n".join(lines)


def run_ioi_patching(
    model: ModelSpec = "tiny",
    *,
    device: str = "cpu",
    dtype: str | None = None,
    remote: bool | str = False,
    dictionaries: str | os.PathLike[str] | None = None,
    bases: list[str] | None = None,
    prompts: str | os.PathLike[str] | None = None,
    corruption: str = "abc",
    n_prompts: int = 16,
    layers: list[int] | None = None,
    method: str = "attribution",
    n_taus: int = 16,
    positions: str = "all",
    out: str | os.PathLike[str] | None = None,
    settings: RunSettings | None = None,
) -> IOIResult:
    """Compare bases by the features needed to restore IOI behaviour at ``resid_out`` sites.

    Args:
        model: bundled name, checkpoint folder or hub id (loaded with ``device``, ``dtype``,
            ``remote``), or a loaded model.
        dictionaries: folder of dictionary sets ``<set>/<site>/`` (default: the
            checkpoint's ``dictionaries/``).
        bases: sets to compare, plus ``"neuron"`` and ``"random"`` (default: every set
            found and both references).
        prompts: prompt pairs .jsonl/.csv (default: ``featcircuits/data/ioi/prompts.jsonl``).
        corruption: rows of that ``corruption`` value (``abc``, ``flip`` or ``all``).
        n_prompts: prompt pairs, drawn with ``settings.seed`` when there are more.
        layers: layers to patch (default: all).
        method: ``"attribution"`` (top-k by attribution over a grid of k) or
            ``"elimination"`` (greedy backward elimination over the tau grid).
        n_taus: points of the 1e-5..1 tau grid (``default_taus``).
        positions: ``"all"`` or ``"final"``.
        out: folder for ``results.csv`` and ``curves.png`` (default: write nothing).
        settings: memory budget, rows per pass (default 1024), seed, progress bars.

    Returns:
        ``IOIResult``; its ``report()`` is the text ``featcircuits ioi`` prints.

    Raises:
        DictionaryLoadError: no dictionaries for the model, or an unknown set in ``bases``.
        OutputError: ``out`` is not writable (checked before the model loads).
        ParameterError: bad ``n_prompts``, ``corruption``, ``method`` or ``positions``.
    """
    settings = settings or RunSettings()
    taus = default_taus(n_taus)  # a bad n_taus fails before the model loads
    if out is not None:
        ensure_writable_dir(out)  # fail before the long work, not after
    with seeded(settings.seed):
        model, name = resolve_model(model, device=device, dtype=dtype, remote=remote)
        checkpoint = Path(resolve_checkpoint(name))
        folder = dictionaries or (checkpoint / "dictionaries" if checkpoint.exists() else None)
        if folder is None:
            raise DictionaryLoadError(f"no dictionaries for {name!r}",
                                      hint="pass dictionaries=FOLDER (--dictionaries) with "
                                      "<set>/<site>/ inside")
        named = [b for b in (bases or []) if b not in REFERENCE_BASES]
        chosen = dictionary_sets(folder, model, names=named or None)
        layers = layers if layers is not None else list(range(num_layers(model)))
        sites = [str(Site("resid_out", layer)) for layer in layers]
        chosen = {set_name: {site: d for site, d in sets.items() if site in sites}
                  for set_name, sets in chosen.items()}
        references = reference_bases(model, sites, seed=settings.seed)
        for reference in REFERENCE_BASES:
            if bases is None or reference in bases:
                chosen[reference] = references[reference]
        chosen = {set_name: {site: to_model(d, model) for site, d in sets.items()}
                  for set_name, sets in chosen.items()}
        pairs = load_ioi_prompts(prompts, corruption, n_prompts, settings.seed)
        results = compare_bases(model, pairs, chosen, method=method, taus=taus,
                                positions=positions, settings=settings)
    result = IOIResult(results, summarize_comparison(results), pairs, name)
    if out is not None:
        result.write(out)
    return result
