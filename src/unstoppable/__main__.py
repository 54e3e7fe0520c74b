"""``python -m unstoppable``: the command-line interface."""
import sys

from unstoppable.cli import main

sys.exit(main())
