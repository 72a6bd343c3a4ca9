"""Run the IOI and parenthesis-circuit CLI examples with the smallest settings that still
exercise them: ``python tests/support/determinism_runs.py OUT`` (also imported by the test)."""

from __future__ import annotations

import sys
from pathlib import Path

COMMANDS = {
    "ioi": ["--quiet", "ioi", "--layers", "1", "--n-prompts", "2", "--bases", "pca",
            "--seed", "3"],
    "parens": ["--quiet", "circuit", "parens", "--n-texts", "1", "--n-targets", "1",
               "--method", "attribution", "--seed", "3"],
}


def run_all(out: Path) -> None:
    from featcircuits.cli.main import main

    for name, argv in COMMANDS.items():
        code = main([*argv, "--out", str(out / name)])
        if code != 0:
            raise SystemExit(f"{name} exited with {code}")


if __name__ == "__main__":
    run_all(Path(sys.argv[1]))
