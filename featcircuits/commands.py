"""Subcommands of the ``featcircuits`` CLI beyond ``info`` (registered on import)."""

from __future__ import annotations

import argparse
import sys

from featcircuits.cli import register_command


# ----------------------------------------------------------------------------- ioi
def _ioi_flags(parser: argparse.ArgumentParser) -> None:
    from featcircuits.experiments import add_ioi_arguments

    add_ioi_arguments(parser)


def _run_ioi(args: argparse.Namespace) -> int:
    from featcircuits.experiments import run_ioi_example

    run_ioi_example(args)
    return 0


register_command(
    "ioi", "IOI feature patching: compare bases by the features needed to restore behaviour",
    "  featcircuits ioi                                # bundled model, every layer\n"
    "  featcircuits ioi --layers 1 2 --n-taus 50 --out out/ioi50\n"
    "  featcircuits ioi --model EleutherAI/pythia-70m-deduped --dictionaries DIR --layers 3",
    _ioi_flags, _run_ioi)


# --------------------------------------------------------------------------- patch
def _patch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True,
                        help="JSONL/CSV with clean, corrupt, answer, wrong_answer columns, or "
                        "auto-circuit prompt JSON")
    parser.add_argument("--model", default="tiny", help="bundled name, folder or hub id")
    parser.add_argument("--dictionaries", required=True,
                        help="one saved dictionary folder (SAELens/native/dictionary_learning)")
    parser.add_argument("--site", default=None,
                        help="site to patch, e.g. resid_out.2 (default: the dictionary's own)")
    parser.add_argument("--features", type=int, nargs="*", default=None,
                        help="feature ids to patch (default: every active feature)")
    parser.add_argument("--search", choices=["none", "elimination", "attribution"],
                        default="none", help="find a minimal feature set instead")
    parser.add_argument("--n-taus", type=int, default=16, help="tau grid size for elimination")
    parser.add_argument("--source", default="clean", choices=["clean", "zero", "mean", "resample"],
                        help="where patched values come from (default clean)")
    parser.add_argument("--positions", default="all", help="all | final")
    parser.add_argument("--out", default=None, help="write the result table here (CSV)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1024,
                        help="most sequences per forward pass")


def _run_patch(args: argparse.Namespace) -> int:
    from featcircuits._io import atomic_path
    from featcircuits.dictionaries.io import load_dictionary
    from featcircuits.models import load_model
    from featcircuits.patching import PatchingExperiment
    from featcircuits.prompts import read_prompts
    from featcircuits.search import attribution_curve, backward_elimination, default_taus

    model = load_model(args.model, device=args.device)
    dictionary = load_dictionary(args.dictionaries, site=args.site, model=model)
    if dictionary.site is None:
        from featcircuits.errors import ParameterError

        raise ParameterError(f"the dictionary in {args.dictionaries!r} does not name its site",
                             hint="pass --site, e.g. --site resid_out.2")
    experiment = PatchingExperiment(model, dictionary, read_prompts(args.prompts),
                                    source=args.source, positions=args.positions,
                                    max_rows=args.batch_size, seed=args.seed,
                                    progress=not args.quiet)
    print(experiment.baselines().to_string(index=False, float_format="%.4f"))
    if args.search == "elimination":
        table = backward_elimination(experiment, taus=default_taus(args.n_taus), seed=args.seed,
                                     progress=not args.quiet)
    elif args.search == "attribution":
        table = attribution_curve(experiment)
    else:
        features = args.features if args.features is not None else experiment.active_features()
        table = experiment.evaluate([features])
        table["features"] = [features]
    shown = table.drop(columns="features")
    print(shown.to_string(index=False, float_format="%.4g"))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.assign(features=table["features"].map(lambda ids: " ".join(map(str, ids)))
                         ).to_csv(tmp, index=False)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


register_command(
    "patch", "patch dictionary features from clean into corrupted prompts and measure",
    "  featcircuits patch --prompts data/ioi/prompts.jsonl \\\n"
    "      --dictionaries featcircuits/zoo/tiny/dictionaries/sae-sparse/resid_out.2\n"
    "  featcircuits patch --prompts my.csv --dictionaries DIR --features 3 17 --source mean\n"
    "  featcircuits patch --prompts p.jsonl --dictionaries DIR --search elimination --out f.csv",
    _patch_flags, _run_patch)
