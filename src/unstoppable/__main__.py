"""``python -m unstoppable``: the command-line interface.

The guard matters: the demo starts worker processes with multiprocessing's
"spawn", which imports the parent's main module (as ``__mp_main__``) in each
child; unguarded, every child would run the command line again.
"""
import sys

from unstoppable.cli import main

if __name__ == "__main__":
    sys.exit(main())
