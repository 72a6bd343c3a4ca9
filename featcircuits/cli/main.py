"""The ``featcircuits`` command line.

Exit codes: 0 success, 1 runtime error (one clear line plus a hint), 2 usage error.
Progress bars go to stderr; results to stdout or files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from featcircuits.errors import FeatCircuitsError

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                           Callable[[argparse.Namespace], int], str, str]] = {}


def register_command(name: str, help_text: str, examples: str,
                     configure: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[argparse.Namespace], int]) -> None:
    """Add subcommand ``name``: ``configure(parser)`` adds its flags, ``run(args)`` runs it."""
    _COMMANDS[name] = (configure, run, help_text, examples)


def _info_flags(parser: argparse.ArgumentParser) -> None:
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


register_command("info", "show versions, device and the bundled model zoo",
                 "  featcircuits info\n  featcircuits info --json", _info_flags, run_info)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    _load_commands()
    parser = argparse.ArgumentParser(
        prog="featcircuits",
        description="Sparse-dictionary feature patching and feature circuits on nnsight.",
        epilog="Run 'featcircuits COMMAND --help' for a command's flags and examples.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (configure, _run, help_text, examples) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text,
                                    epilog="examples:\n" + examples,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                         help="no progress bars")
        configure(sub)
    return parser


def _load_commands() -> None:
    """Import modules that register further subcommands (kept lazy for a fast --help)."""
    import importlib

    for module in ("featcircuits.cli.commands", "featcircuits.cli.commands_train"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        import os

        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    _configure, run, _help, _examples = _COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except FeatCircuitsError as exc:
        print(f"featcircuits {args.command}: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__name__ != "RemoteError":  # nnsight's NDIF failures; bugs keep tracebacks
            raise
        print(f"featcircuits {args.command}: error: remote execution failed: "
              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        print("  hint: check NDIF_API_KEY, the network and that NDIF serves this model "
              "(python -c 'import nnsight; print(nnsight.ndif_status())')", file=sys.stderr)
        return 1


if __name__ == "__main__":  # run through the package module so subcommands share one registry
    from featcircuits.cli.main import main as package_main

    sys.exit(package_main())
