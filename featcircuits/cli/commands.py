"""The ``patch``, ``render`` and ``dashboard`` subcommands: flags and runners.

Each ``add_*_arguments(parser)`` adds a command's flags and each ``run_*(args)`` converts
them to library keywords, calls the library and prints; heavy imports happen inside the
runners so ``featcircuits --help`` stays fast. ``featcircuits.cli.main.COMMANDS`` lists them.
"""

from __future__ import annotations

import argparse
import sys

from featcircuits.cli.flags import (
    add_memory_flag,
    add_model_flags,
    add_run_flags,
    dictionary_for_model,
    model_from_args,
    non_negative_int,
    positive_int,
    settings_from_args,
)


# --------------------------------------------------------------------------- patch
def add_patch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True,
                        help="JSONL/CSV with clean, corrupt, answer, wrong_answer columns, or "
                        "auto-circuit prompt JSON")
    add_model_flags(parser)
    parser.add_argument("--dictionaries", required=True,
                        help="one saved dictionary folder (SAELens/native/dictionary_learning), "
                        "a transcoder file, or a spec such as "
                        "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre (docs/real-models.md)")
    parser.add_argument("--site", default=None,
                        help="site to patch, e.g. resid_out.2 (default: the dictionary's own)")
    parser.add_argument("--features", type=non_negative_int, nargs="*", default=None,
                        help="feature ids to patch (default: every active feature)")
    parser.add_argument("--search", choices=["none", "elimination", "attribution"],
                        default="none", help="find a minimal feature set instead")
    parser.add_argument("--n-taus", type=positive_int, default=16, help="tau grid size for elimination")
    parser.add_argument("--source", default="clean", choices=["clean", "zero", "mean", "resample"],
                        help="where patched values come from (default clean)")
    parser.add_argument("--positions", default="all", help="all | final")
    parser.add_argument("--out", default=None, help="write the result table here (CSV)")
    add_run_flags(parser, batch_size=1024)
    add_memory_flag(parser)


def run_patch(args: argparse.Namespace) -> int:
    from featcircuits.dictionaries.io import load_dictionary
    from featcircuits.patching.experiment import PatchingExperiment
    from featcircuits.patching.search import attribution_curve, backward_elimination, default_taus
    from featcircuits.tasks.prompts import read_prompts
    from featcircuits.writes import atomic_path

    settings = settings_from_args(args)  # a bad --max-memory fails before anything loads
    dictionary = load_dictionary(args.dictionaries, site=args.site,  # fail fast, before the model
                                 progress=settings.progress)
    if args.out:
        from featcircuits.writes import check_output_file

        check_output_file(args.out, folder=True)  # before the model loads and the computation runs
    model = model_from_args(args)
    if dictionary.site is not None:
        from featcircuits.dictionaries.io import check_dictionary_fits

        check_dictionary_fits(dictionary, model, dictionary.site)
    if dictionary.site is None:
        from featcircuits.errors import ParameterError

        raise ParameterError(f"the dictionary in {args.dictionaries!r} does not name its site",
                             hint="pass --site, e.g. --site resid_out.2")
    dictionary = dictionary_for_model(dictionary, model, args)
    experiment = PatchingExperiment(model, dictionary, read_prompts(args.prompts),
                                    source=args.source, positions=args.positions,
                                    settings=settings)
    print(experiment.baselines().to_string(index=False, float_format="%.4f"))
    if args.search == "elimination":
        table = backward_elimination(experiment, taus=default_taus(args.n_taus),
                                     seed=settings.seed, progress=settings.progress)
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


# -------------------------------------------------------------------------- render
RENDER_FORMATS = (".png", ".svg", ".pdf", ".dot", ".html")



def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="circuit graph JSON (networkx node-link format)")
    parser.add_argument("-o", "--out", required=True,
                        help="output file; the writer is picked by extension: "
                        + ", ".join(RENDER_FORMATS))
    parser.add_argument("--title", default=None, help="title of the figure / page")
    from featcircuits.render import limits

    parser.add_argument("--max-nodes", type=positive_int, default=None,
                        help="refuse graphs with more nodes (default "
                        f"{limits.DIAGRAM_MAX_NODES} for PNG/SVG/PDF, {limits.HTML_MAX_NODES} "
                        f"for HTML); edges are capped at {limits.EDGES_PER_NODE} x this")
    parser.add_argument("--max-positions", type=positive_int, default=None,
                        help="refuse graphs spanning more token positions (default "
                        f"{limits.DIAGRAM_MAX_POSITIONS} for PNG/SVG/PDF, "
                        f"{limits.HTML_MAX_POSITIONS} for HTML)")


def run_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from featcircuits.errors import OutputError

    suffix = Path(args.out).suffix.lower()
    if suffix not in RENDER_FORMATS:
        raise OutputError(f"cannot render to {args.out!r}: unknown extension {suffix!r}",
                          hint="use one of " + ", ".join(RENDER_FORMATS))
    from featcircuits.graph.io import read_graph
    from featcircuits.writes import check_output_file

    check_output_file(args.out, folder=True)
    graph = read_graph(args.graph)
    limits = {key: value for key, value in (("max_nodes", args.max_nodes),
                                            ("max_positions", args.max_positions))
              if value is not None}
    if suffix == ".dot":
        from featcircuits.render.dot import write_dot

        write_dot(graph, args.out)
    elif suffix == ".html":
        from featcircuits.render.html import to_html

        to_html(graph, args.out, title=args.title, **limits)
    else:
        from featcircuits.render.diagram import render_circuit, save_figure

        kwargs = {} if args.title is None else {"title": args.title}
        save_figure(render_circuit(graph, **kwargs, **limits), args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------- dashboard
def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site of the feature, e.g. resid_out.3")
    parser.add_argument("--feature", type=non_negative_int, required=True, help="dictionary index")
    parser.add_argument("--dictionaries", default=None,
                        help="a saved dictionary folder, a folder of per-site folders, or a "
                        "spec such as dictionary_learning:pythia-70m-deduped/resid_out.3 "
                        "(default: the bundled model's sae-sparse set)")
    add_model_flags(parser)
    parser.add_argument("--n-texts", type=positive_int, default=200,
                        help="corpus documents to scan (default 200)")
    add_run_flags(parser, batch_size=32)
    parser.add_argument("--top-k", type=positive_int, default=10, help="top contexts to keep")
    parser.add_argument("--logit-token", default=None,
                        help="token whose logit drop the ablation measures (default: the one "
                        "the feature pushes up most)")
    parser.add_argument("-o", "--out", required=True, help="output .html, .png, .svg or .pdf")


def _dashboard_dictionary_folder(args: argparse.Namespace, site: str):
    """The folder holding the dictionary for ``site`` (checked before the model loads)."""
    from pathlib import Path

    from featcircuits.dictionaries.io import CFG_FILE, WEIGHTS_FILE
    from featcircuits.errors import DictionaryLoadError
    from featcircuits.model.loading import ZOO_DIR

    if args.dictionaries is None:
        sets = ZOO_DIR / str(args.model) / "dictionaries"
        found = sorted(p.name for p in sets.iterdir() if p.is_dir()) if sets.is_dir() else []
        if not found:
            raise DictionaryLoadError(f"no bundled dictionaries for model {args.model!r}",
                                      hint="pass --dictionaries PATH")
        from featcircuits.experiments.inputs import preferred_set

        return sets / preferred_set(found) / site  # the sparse SAE, as in the docs
    from featcircuits.dictionaries.hub import is_spec

    if is_spec(args.dictionaries):  # saelens:..., dictionary_learning:..., circuit_tracer:...
        return args.dictionaries
    folder = Path(args.dictionaries)
    holds_one = any((folder / name).is_file() for name in (WEIGHTS_FILE, CFG_FILE, "ae.pt"))
    if not holds_one and (folder / site).is_dir():
        return folder / site
    return folder


def run_dashboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from featcircuits.dashboards import (
        default_texts,
        feature_dashboard_data,
        write_dashboard,
    )
    from featcircuits.dictionaries.io import load_dictionary
    from featcircuits.errors import OutputError, ParameterError
    from featcircuits.model.sites import Site

    if Path(args.out).suffix.lower() not in (".html", ".htm", ".png", ".svg", ".pdf"):
        raise OutputError(f"cannot write a dashboard as {args.out!r}",
                          hint="use a path ending in .html, .png, .svg or .pdf")
    if args.n_texts < 1:
        raise ParameterError(f"--n-texts must be >= 1, got {args.n_texts}")
    settings = settings_from_args(args)
    from featcircuits.writes import check_output_file

    check_output_file(args.out, folder=True)  # before the model loads and the corpus is scanned
    site = str(Site.parse(args.site))
    folder = _dashboard_dictionary_folder(args, site)
    model = model_from_args(args)
    dictionary = dictionary_for_model(
        load_dictionary(folder, site=site, model=model, progress=settings.progress), model, args)
    token = args.logit_token
    if token is not None and token.isdigit():
        token = int(token)
    data = feature_dashboard_data(model, dictionary, site, args.feature,
                                  texts=default_texts(args.n_texts, seed=settings.seed),
                                  top_k=args.top_k, logit_token=token,
                                  batch_size=settings.rows(32),
                                  progress=settings.progress)
    write_dashboard(data, args.out)
    print(f"feature {data.feature} at {data.site}: fires on {len(data.fire_activations)} of "
          f"{data.n_counted_tokens} tokens; top context max {data.top_contexts[0].max_activation:.4g}"
          if data.top_contexts else "no contexts")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0

