"""``python -m diffstyle360_core …``: the command line lives in :mod:`diffstyle360_core.cli`."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
