"""``python -m featcircuits`` runs the command line."""

import sys

from featcircuits.cli.main import main

sys.exit(main())
