"""The ``featcircuits`` command line.

Exit codes: 0 success, 1 failure (one clear line plus a hint), 2 usage error (a bad flag
value, named with its flag, before any work), 130 interrupted. No traceback is printed
unless ``--debug`` is given: an unexpected exception (a bug) prints one line naming it and
asking for ``--debug``, which re-raises every error with its traceback.
Progress bars go to stderr; results to stdout or files. ``COMMANDS`` is the one table of
subcommands (name, help, examples, flag adder, runner); runners import the library lazily,
so ``featcircuits --help`` stays fast. ``--quiet`` becomes ``progress=False`` in the
``RunSettings`` the runners build (``featcircuits.cli.flags.settings_from_args``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from featcircuits.cli import commands, commands_train, experiments
from featcircuits.errors import FeatCircuitsError

__all__ = ["COMMANDS", "COMMAND_NAMES", "Command", "build_parser", "main"]


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run_info(args: argparse.Namespace) -> int:
    import json
    import platform

    import nnsight
    import torch
    import transformers

    import featcircuits
    from featcircuits.model.loading import ZOO_DIR, zoo_names

    zoo = {}
    for name in zoo_names():
        folder = ZOO_DIR / name / "dictionaries"
        sets = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        zoo[name] = {"path": str(ZOO_DIR / name), "dictionaries": sets}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {
        "featcircuits": featcircuits.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "nnsight": getattr(nnsight, "__version__", "?"),
        "transformers": transformers.__version__,
        "device": device,
        "cuda_devices": torch.cuda.device_count(),
        "zoo": zoo,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("featcircuits", "python", "torch", "nnsight", "transformers", "device"):
        print(f"{key:>13}: {info[key]}")
    print("  bundled zoo:" + ("" if zoo else " (none)"))
    for name, entry in zoo.items():
        sets = ", ".join(entry["dictionaries"]) or "no dictionaries"
        print(f"    {name}: {entry['path']}  [{sets}]")
    return 0


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` adds its flags, ``run(args)`` runs it and
    returns the exit code; ``help`` is its one-line description, ``examples`` its epilog."""

    name: str
    help: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: tuple[Command, ...] = (
    Command("info", "show versions, device and the bundled model zoo",
            "  featcircuits info\n  featcircuits info --json", add_info_arguments, run_info),
    Command("ioi", "IOI feature patching: compare bases by the features needed to restore "
            "behaviour",
            "  featcircuits ioi                                # bundled model, every layer\n"
            "  featcircuits ioi --layers 1 2 --n-taus 50 --out out/ioi50\n"
            "  featcircuits ioi --model EleutherAI/pythia-70m-deduped --dictionaries DIR "
            "--layers 3",
            experiments.add_ioi_arguments, experiments.run_ioi),
    Command("patch", "patch dictionary features from clean into corrupted prompts and measure",
            "  featcircuits patch --prompts featcircuits/data/ioi/prompts.jsonl \\\n"
            "      --dictionaries featcircuits/zoo/tiny/dictionaries/sae-sparse/resid_out.2\n"
            "  featcircuits patch --prompts my.csv --dictionaries DIR --features 3 17 --source "
            "mean\n"
            "  featcircuits patch --prompts p.jsonl --dictionaries DIR --search elimination "
            "--out f.csv",
            commands.add_patch_arguments, commands.run_patch),
    Command("render", "draw a circuit graph JSON as PNG/SVG/PDF, Graphviz DOT or interactive "
            "HTML",
            "  featcircuits render circuit.json -o circuit.png\n"
            "  featcircuits render circuit.json -o circuit.html --title 'IOI circuit'",
            commands.add_render_arguments, commands.run_render),
    Command("dashboard", "feature dashboard: top contexts, activation histogram, logit and "
            "ablation effects",
            "  featcircuits dashboard --site resid_out.3 --feature 117 -o f117.html\n"
            "  featcircuits dashboard --site resid_out.2 --feature 5 --dictionaries DIR -o f5.png",
            commands.add_dashboard_arguments, commands.run_dashboard),
    Command("circuit", "find a feature circuit (closing parenthesis or IOI) and save JSON + "
            "diagram",
            "  featcircuits circuit parens                       # bundled model, exact ACDC\n"
            "  featcircuits circuit parens --method hybrid --tau 0.05 --out out/parens_hybrid\n"
            "  featcircuits circuit ioi --n-prompts 8 --set sae-sparse",
            experiments.add_circuit_command_arguments, experiments.run_circuit),
    Command("train-sae", "train a sparse autoencoder at one site and save it (SAELens layout)",
            "  featcircuits train-sae --site resid_out.2 --out out/sae2           # bundled "
            "model+corpus\n"
            "  featcircuits train-sae --site resid_out.2 --k 16 --expansion 8 --steps 5000 "
            "--out DIR\n"
            "  featcircuits train-sae --model EleutherAI/pythia-70m-deduped --site resid_out.3 "
            "\\\n"
            "      --texts docs.txt --l1 3 --device cuda --out DIR --resume",
            commands_train.add_train_sae_arguments, commands_train.run_train_sae),
    Command("fit-ica", "fit a FastICA (or PCA) basis at one site and save it (SAELens layout)",
            "  featcircuits fit-ica --site resid_out.2 --out out/ica2              # bundled "
            "model+corpus\n"
            "  featcircuits fit-ica --site resid_out.2 --method pca --out out/pca2\n"
            "  featcircuits fit-ica --site resid_out.1 --n-components 64 --contrast cube "
            "--resume \\\n"
            "      --texts docs.txt --out DIR",
            commands_train.add_fit_ica_arguments, commands_train.run_fit_ica),
)
"""Every subcommand, in ``--help`` order (the one table; nothing registers itself)."""
COMMAND_NAMES = tuple(command.name for command in COMMANDS)


def build_parser(width: int | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand of ``COMMANDS``; help is wrapped at
    ``width`` columns (default: the terminal's)."""
    formatter = argparse.HelpFormatter
    described = argparse.RawDescriptionHelpFormatter
    if width is not None:
        formatter = functools.partial(argparse.HelpFormatter, width=width)
        described = functools.partial(argparse.RawDescriptionHelpFormatter, width=width)
    parser = argparse.ArgumentParser(
        prog="featcircuits",
        description="Sparse-dictionary feature patching and feature circuits on nnsight.",
        epilog="Run 'featcircuits COMMAND --help' for a command's flags and examples.",
        formatter_class=formatter,
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (for bug reports)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help,
                                    epilog="examples:\n" + command.examples,
                                    formatter_class=described)
        sub.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                         help="no progress bars")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the full traceback of any error")
        command.add_arguments(sub)
    return parser


@contextlib.contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """With ``enabled`` False, turn off transformers' and huggingface_hub's own progress
    bars (model loading, downloads) for the block and restore them afterwards; our own bars
    follow ``RunSettings.progress`` / ``progress=``. Nothing is written to ``os.environ``."""
    if enabled:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    transformers_was_on = transformers_logging.is_progress_bar_enabled()
    hub_was_off = hub_utils.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_was_on:
            transformers_logging.enable_progress_bar()
        if not hub_was_off:
            hub_utils.enable_progress_bars()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``featcircuits ARGV``; returns the exit code (``SystemExit(2)`` on usage errors)."""
    from featcircuits.cli.flags import usage_problem

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    problem = usage_problem(args)
    if problem is not None:
        parser.error(f"{args.command}: {problem}")  # exit 2
    command = next(command for command in COMMANDS if command.name == args.command)
    debug = bool(getattr(args, "debug", False))
    try:
        with _library_progress_bars(not getattr(args, "quiet", False)):
            return int(command.run(args) or 0)
    except FeatCircuitsError as exc:
        if debug:
            raise
        print(f"featcircuits {args.command}: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        if type(exc).__name__ == "RemoteError":  # nnsight's NDIF failures
            print(f"featcircuits {args.command}: error: remote execution failed: "
                  f"{first_line or type(exc).__name__}", file=sys.stderr)
            print("  hint: check NDIF_API_KEY, the network and that NDIF serves this model "
                  "(python -c 'import nnsight; print(nnsight.ndif_status())')", file=sys.stderr)
            return 1
        print(f"featcircuits {args.command}: unexpected error: {type(exc).__name__}: "
              f"{first_line}", file=sys.stderr)
        print("  hint: this is a bug or an input featcircuits does not check yet; rerun with "
              "--debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
