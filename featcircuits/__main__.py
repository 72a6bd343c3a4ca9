"""``python -m featcircuits`` runs the command line."""

import sys

from featcircuits.cli import main

sys.exit(main())
