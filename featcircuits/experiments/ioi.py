"""Ready-made experiments shared by the examples and the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
import torch

from featcircuits.files import atomic_path, ensure_writable_dir
from featcircuits.cli.flags import add_model_flags, add_run_flags, model_from_args
from featcircuits.patching.compare import compare_bases, reference_bases, summarize_comparison
from featcircuits.dictionaries.io import load_dictionaries
from featcircuits.errors import DictionaryLoadError, ParameterError
from featcircuits.engine.settings import RunSettings
from featcircuits.model.loading import resolve_checkpoint, to_model
from featcircuits.tasks.prompts import read_prompts
from featcircuits.patching.search import default_taus
from featcircuits.model.sites import Site, num_layers


def default_ioi_prompts() -> Path:
    """The bundled held-out IOI prompt pairs (``data/ioi/prompts.jsonl``)."""
    from featcircuits.tasks.ioi import default_prompts_path

    return Path(default_prompts_path())


def dictionary_sets(folder: str | os.PathLike[str], model=None, *,
                    names: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Load ``{set name: {site: Dictionary}}`` from a folder of sets (``<folder>/<set>/<site>``)."""
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


def add_ioi_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the IOI patching experiment (example script and ``featcircuits ioi``)."""
    add_model_flags(parser)
    parser.add_argument("--dictionaries", default=None,
                        help="folder of dictionary sets <set>/<site>/ (default: the bundled "
                        "model's)")
    parser.add_argument("--bases", nargs="+", default=None,
                        help="sets to compare (default: every set found) plus neuron, random")
    parser.add_argument("--prompts", default=None,
                        help="prompt pairs .jsonl/.csv (default: data/ioi/prompts.jsonl)")
    parser.add_argument("--corruption", default="abc",
                        help="which corruption rows to use when the file has a 'corruption' "
                        "column (abc | flip | all; default abc)")
    parser.add_argument("--n-prompts", type=int, default=16, help="prompt pairs (default 16)")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="layers to patch (default: all)")
    parser.add_argument("--method", choices=["elimination", "attribution"],
                        default="attribution",
                        help="attribution: patch the top-k features by attribution for a grid "
                        "of k (fast, the default); elimination: the paper's greedy backward "
                        "elimination over a tau grid (minutes)")
    parser.add_argument("--n-taus", type=int, default=16,
                        help="points on the 1e-5..1 tau grid (paper: 50; default 16)")
    parser.add_argument("--positions", default="all", help="all | final (default all)")
    parser.add_argument("--out", default="out/ioi", help="output folder (default out/ioi)")
    add_run_flags(parser, batch_size=1024)


def load_ioi_prompts(path: str | os.PathLike[str] | None, corruption: str, n_prompts: int,
                     seed: int) -> pd.DataFrame:
    """Prompt pairs from ``path`` filtered by corruption, ``n_prompts`` of them (seeded)."""
    frame = read_prompts(path or default_ioi_prompts())
    if "corruption" in frame.columns and corruption != "all":
        frame = frame[frame["corruption"] == corruption]
        if frame.empty:
            raise ParameterError(f"no prompt pairs with corruption {corruption!r}",
                                 hint="use --corruption abc, flip or all")
    if n_prompts < 1:
        raise ParameterError(f"--n-prompts must be >= 1, got {n_prompts}")
    if len(frame) > n_prompts:
        frame = frame.sample(n=n_prompts, random_state=seed)
    return frame.reset_index(drop=True)


def run_ioi_example(args: argparse.Namespace) -> pd.DataFrame:
    """Run the IOI basis comparison; write results.csv and curves.png under ``args.out``."""
    from featcircuits.render.curves import plot_patching_curves

    settings = RunSettings(max_memory=getattr(args, "max_memory", None),
                           max_rows=args.batch_size, seed=args.seed,
                           progress=not getattr(args, "quiet", False))  # fail before loading
    torch.manual_seed(args.seed)
    ensure_writable_dir(args.out)  # fail before the long work, not after
    model = model_from_args(args)
    checkpoint = Path(resolve_checkpoint(args.model))
    folder = args.dictionaries or (checkpoint / "dictionaries" if checkpoint.exists() else None)
    if folder is None:
        raise DictionaryLoadError(f"no dictionaries for {args.model!r}",
                                  hint="pass --dictionaries FOLDER with <set>/<site>/ inside")
    named = [b for b in (args.bases or []) if b not in ("neuron", "random")]
    bases = dictionary_sets(folder, model, names=named or None)
    layers = args.layers if args.layers is not None else list(range(num_layers(model)))
    sites = [str(Site("resid_out", layer)) for layer in layers]
    bases = {name: {site: d for site, d in sets.items() if site in sites}
             for name, sets in bases.items()}
    references = reference_bases(model, sites, seed=args.seed)
    for name in ("neuron", "random"):
        if args.bases is None or name in args.bases:
            bases[name] = references[name]
    bases = {name: {site: to_model(d, model) for site, d in sets.items()}
             for name, sets in bases.items()}
    prompts = load_ioi_prompts(args.prompts, args.corruption, args.n_prompts, args.seed)
    positions = args.positions
    results = compare_bases(model, prompts, bases, method=args.method,
                            taus=default_taus(args.n_taus), positions=positions,
                            settings=settings)
    out = Path(args.out)
    csv = results.assign(features=results["features"].map(lambda ids: " ".join(map(str, ids))))
    with atomic_path(out / "results.csv") as tmp:
        csv.to_csv(tmp, index=False, float_format="%.6g")
    plot_patching_curves(results, panel="site", line="basis", path=out / "curves.png",
                         title=f"IOI patching on {args.model}: KL(clean ‖ patched) at the answer")
    summary = summarize_comparison(results)
    _print_summary(summary, prompts, results)
    print(f"\nwrote {out / 'results.csv'} and {out / 'curves.png'}")
    return results


def _print_summary(summary: pd.DataFrame, prompts: pd.DataFrame, results: pd.DataFrame) -> None:
    first = results.iloc[0]
    print(f"{len(prompts)} prompt pairs; logit diff clean {first['logit_diff_clean']:.2f}, "
          f"corrupt {first['logit_diff_corrupt']:.2f}; KL(clean ‖ corrupt) "
          f"{first['kl_corrupt']:.3f}")
    print("features needed to bring KL under 10% of the unpatched KL "
          "(edit magnitude at that point):")
    table = summary.pivot(index="site", columns="basis", values="features_needed")
    edits = summary.pivot(index="site", columns="basis", values="edit_magnitude")
    order = list(dict.fromkeys(summary["basis"]))
    sites = sorted(table.index, key=lambda name: Site.parse(name).depth)
    header = f"{'site':<12}" + "".join(f"{name:>16}" for name in order)
    print(header)
    for site in sites:
        cells = []
        for name in order:
            needed, edit = table.loc[site, name], edits.loc[site, name]
            cells.append(f"{'—':>16}" if pd.isna(needed) else f"{int(needed):>7} ({edit:6.2f})")
        print(f"{site:<12}" + "".join(cells))

