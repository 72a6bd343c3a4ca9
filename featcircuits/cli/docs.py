"""Regenerate the ``--help`` part of docs/cli.md: ``python -m featcircuits.cli.docs``.

The page keeps its hand-written text; only the part between ``BEGIN`` and ``END`` is
replaced by the top-level help and each subcommand's help (at 80 columns).
``tests/cli/test_cli.py`` fails when the page is out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- BEGIN generated from --help by python -m featcircuits.cli.docs -->"
END = "<!-- END generated -->"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def help_markdown(columns: int = 80) -> str:
    """The help text of ``featcircuits`` and of every subcommand as Markdown sections,
    wrapped as a ``columns``-wide terminal would (argparse keeps two columns free)."""
    from featcircuits.cli.main import build_parser

    parser = build_parser(width=columns - 2)
    parts = ["```text", parser.format_help().rstrip(), "```"]
    subparsers = next(action for action in parser._actions
                      if isinstance(action, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        parts += ["", f"## `featcircuits {name}`", "", "```text",
                  sub.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def updated_page(text: str) -> str:
    """``text`` (the page) with its generated part replaced by ``help_markdown()``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"docs/cli.md lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{help_markdown()}\n{END}{tail}"


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    new = updated_page(text)
    if new != text:
        from featcircuits.writes import atomic_write_text

        atomic_write_text(PAGE, new)
        print(f"updated {PAGE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
