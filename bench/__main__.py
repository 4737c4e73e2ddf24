"""``python -m bench ARGS`` (from the repository root): the speed and memory bench."""

import sys

from .bench import main

if __name__ == "__main__":
    sys.exit(main())
