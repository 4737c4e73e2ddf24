"""Old entry point, kept as a thin alias: use ``python -m diffstyle360_core bench`` (see bench/RESULTS.md).

``python bench/bench_pipeline.py ARGS`` runs ``python -m diffstyle360_core.bench ARGS``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffstyle360_core.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
