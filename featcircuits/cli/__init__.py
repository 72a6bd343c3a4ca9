"""The ``featcircuits`` command line (the library never imports this package).

``featcircuits.cli.main.COMMANDS`` is the table of subcommands; each runner converts its
flags to library keywords (``featcircuits.cli.flags``), calls the library and prints.
"""

from featcircuits.cli.main import COMMANDS, Command, build_parser, main

__all__ = ["COMMANDS", "Command", "build_parser", "main"]
