"""The ``ioi`` and ``circuit`` subcommands: flags of the ready-made experiments, converted
to the keywords of ``featcircuits.experiments`` (``run_ioi_patching``, ``parens_circuit``,
``ioi_circuit``), whose results are printed here.

The example scripts ``examples/ioi_circuit.py`` and ``examples/parenthesis_circuit.py``
reuse ``add_circuit_arguments`` and ``run_circuit_task``.
"""

from __future__ import annotations

import argparse

from featcircuits.cli.flags import (
    add_memory_flag,
    add_model_flags,
    add_run_flags,
    model_keywords,
    non_negative_float,
    non_negative_int,
    positive_int,
    seed_int,
    settings_from_args,
)

__all__ = [
    "add_circuit_arguments",
    "add_circuit_command_arguments",
    "add_ioi_arguments",
    "run_circuit",
    "run_circuit_task",
    "run_ioi",
]

CIRCUIT_METHODS = ("acdc", "attribution", "hybrid")  # featcircuits.experiments.METHODS


# ----------------------------------------------------------------------------- ioi
def add_ioi_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``featcircuits ioi`` (the keywords of ``run_ioi_patching``)."""
    add_model_flags(parser)
    parser.add_argument("--dictionaries", default=None,
                        help="folder of dictionary sets <set>/<site>/ (default: the bundled "
                        "model's)")
    parser.add_argument("--bases", nargs="+", default=None,
                        help="sets to compare (default: every set found) plus neuron, random")
    parser.add_argument("--prompts", default=None,
                        help="prompt pairs .jsonl/.csv (default: featcircuits/data/ioi/prompts.jsonl)")
    parser.add_argument("--corruption", default="abc",
                        help="which corruption rows to use when the file has a 'corruption' "
                        "column (abc | flip | all; default abc)")
    parser.add_argument("--n-prompts", type=positive_int, default=16, help="prompt pairs (default 16)")
    parser.add_argument("--layers", type=non_negative_int, nargs="+", default=None,
                        help="layers to patch (default: all)")
    parser.add_argument("--method", choices=["elimination", "attribution"],
                        default="attribution",
                        help="attribution: patch the top-k features by attribution for a grid "
                        "of k (fast, the default); elimination: the paper's greedy backward "
                        "elimination over a tau grid (minutes)")
    parser.add_argument("--n-taus", type=positive_int, default=16,
                        help="points on the 1e-5..1 tau grid (paper: 50; default 16)")
    parser.add_argument("--positions", default="all", help="all | final (default all)")
    parser.add_argument("--out", default="out/ioi", help="output folder (default out/ioi)")
    add_run_flags(parser, batch_size=1024)
    add_memory_flag(parser)


def run_ioi(args: argparse.Namespace) -> int:
    """``featcircuits ioi``: run ``run_ioi_patching`` and print its report."""
    from featcircuits.experiments.ioi import run_ioi_patching

    settings = settings_from_args(args)  # a bad --max-memory fails before anything loads
    result = run_ioi_patching(**model_keywords(args), dictionaries=args.dictionaries,
                              bases=args.bases, prompts=args.prompts,
                              corruption=args.corruption, n_prompts=args.n_prompts,
                              layers=args.layers, method=args.method, n_taus=args.n_taus,
                              positions=args.positions, out=args.out, settings=settings)
    print(result.report())
    print(f"\nwrote {result.paths['results']} and {result.paths['curves']}")
    return 0


# ------------------------------------------------------------------------- circuit
def add_circuit_arguments(parser: argparse.ArgumentParser, *, out: str,
                          method: str | None = None, tau: float | None = None,
                          max_nodes: int | None = None) -> None:
    """Flags shared by the circuit experiments (``featcircuits circuit`` and the example
    scripts); ``method``/``tau`` ``None`` keep each task's default."""
    add_model_flags(parser)
    parser.add_argument("--dictionaries", default=None,
                        help="folder of dictionary sets <set>/<site>/ (default: the model's)")
    parser.add_argument("--set", default=None, help="dictionary set (default: first found)")
    parser.add_argument("--method", choices=CIRCUIT_METHODS, default=method,
                        help="circuit discovery method (default: acdc for parens, hybrid for "
                        "ioi)" if method is None else f"circuit discovery method (default "
                        f"{method})")
    parser.add_argument("--tau", type=non_negative_float, default=tau,
                        help="edge threshold, as a fraction of the downstream node's typical "
                        "magnitude (default: 0.03 for parens, 0.01 for ioi)" if tau is None
                        else f"edge threshold, relative (default {tau})")
    parser.add_argument("--absolute", action="store_true",
                        help="--tau is an absolute threshold in the downstream node's units")
    parser.add_argument("--ablation", choices=["zero", "mean", "position_mean", "resample"],
                        default=None, help="ablation for discovery and faithfulness (default: "
                        "position_mean for positional circuits, else mean)")
    parser.add_argument("--max-nodes", type=positive_int, default=max_nodes,
                        help="attribution/hybrid: most nodes kept per site (default: no cap)")
    parser.add_argument("--out", default=out, help=f"output folder (default {out})")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="most sequences per forward pass (default 256)")
    parser.add_argument("--edges", action="store_true",
                        help="also measure the edge set's faithfulness (path patching; slower)")
    if "--quiet" not in parser._option_string_actions:  # the CLI adds its own
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_circuit_command_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``featcircuits circuit``: the task, the shared circuit flags, each task's."""
    parser.add_argument("task", choices=["parens", "ioi"],
                        help="parens: the closing-parenthesis circuit; ioi: the IOI "
                        "logit-difference circuit")
    add_circuit_arguments(parser, out="out/circuit")
    parser.add_argument("--n-texts", type=positive_int, default=8, help="parens: documents (default 8)")
    parser.add_argument("--n-targets", type=positive_int, default=2,
                        help="parens: last-layer ')' features to explain (default 2)")
    parser.add_argument("--prompts", default=None, help="ioi: prompt pairs .jsonl/.csv")
    parser.add_argument("--corruption", default="abc", help="ioi: abc | flip | all")
    parser.add_argument("--template", default="largest", help="ioi: template id, largest or all")
    parser.add_argument("--n-prompts", type=positive_int, default=16, help="ioi: prompt pairs")
    parser.add_argument("--no-positional", dest="positional", action="store_false",
                        help="ioi: one node per feature instead of per (feature, position)")
    add_memory_flag(parser)


def run_circuit(args: argparse.Namespace) -> int:
    """``featcircuits circuit TASK``."""
    return run_circuit_task(args.task, args)


def run_circuit_task(task: str, args: argparse.Namespace) -> int:
    """Run ``parens_circuit`` (``task="parens"``) or ``ioi_circuit`` with the flags of
    ``add_circuit_arguments`` (plus the task's own) and print the report. Flags left at
    ``None`` are not passed, so the experiment's defaults apply."""
    from featcircuits.experiments import ioi_circuit, parens_circuit

    settings = settings_from_args(args)
    keywords = {**model_keywords(args), "dictionaries": args.dictionaries,
                "set_name": args.set, "method": args.method, "tau": args.tau,
                "relative_tau": not args.absolute, "ablation": args.ablation,
                "max_nodes": args.max_nodes, "edges": args.edges, "out": args.out}
    if task == "parens":
        experiment = parens_circuit
        keywords.update(n_texts=args.n_texts, n_targets=args.n_targets)
    else:
        experiment = ioi_circuit
        keywords.update(prompts=args.prompts, corruption=args.corruption,
                        template=args.template, n_prompts=args.n_prompts,
                        positional=args.positional)
    result = experiment(**{key: value for key, value in keywords.items() if value is not None},
                        settings=settings)
    print(result.report())
    print(f"\nwrote {', '.join(str(p) for p in result.paths.values())} "
          f"({result.seconds:.1f} s)")
    return 0
