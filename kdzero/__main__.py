"""``python -m kdzero`` runs the command line."""
import sys

from kdzero.cli import main

sys.exit(main())
