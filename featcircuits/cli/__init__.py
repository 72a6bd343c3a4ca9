"""The ``featcircuits`` command line (the library never imports this package)."""

from featcircuits.cli.main import main

__all__ = ["main"]
