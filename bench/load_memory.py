"""Process memory (RSS) of loading a weight folder and dropping it again, per load dtype, one table.

    python -m bench.load_memory models/diffstyle360/sd15_a/back_view --dtypes bf16,fp16,fp32

Each variant runs in a fresh Python process (so one variant's freed memory
cannot flatter the next): RSS before loading, with the model loaded, after
``del`` + ``gc.collect()`` (what a host's "unload" gives back), and after glibc's
``malloc_trim(0)`` (what the allocator could give back but kept). The last
column is RSS after ``del`` minus the baseline: the memory an unloaded model
leaves behind. ``make-tiny --size sd15 --dtype fp16`` writes a folder of the
real shapes to measure without a download. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

GIB = 2 ** 30


def rss_bytes() -> int:
    """Resident set size of this process (``VmRSS``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this bench needs Linux)")


def measure(folder: str, dtype: Optional[str]) -> Dict[str, float]:
    """Load ``folder`` in ``dtype`` (None: as stored) on the CPU and return the RSS points (bytes) and times."""
    import torch

    from diffstyle360_core.returnable_memory import release_freed_heap
    from diffstyle360_core.weights import load_model

    torch.set_num_threads(1)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    model = load_model(folder, device="cpu", dtype=dtype)
    seconds = time.perf_counter() - start
    weights = sum(t.nbytes for t in model.state_dict().values())
    loaded = rss_bytes()
    del model
    gc.collect()
    freed = rss_bytes()
    release_freed_heap()
    trimmed = rss_bytes()
    return {"before": before, "loaded": loaded, "freed": freed, "trimmed": trimmed,
            "weights": weights, "load_s": seconds}


def _run_in_child(folder: str, dtype: str) -> Dict[str, float]:
    code = ("import json, sys; from bench.load_memory import measure; "
            "print(json.dumps(measure(sys.argv[1], None if sys.argv[2] == 'stored' else sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, folder, dtype], capture_output=True, text=True,
                          cwd=str(Path(__file__).resolve().parent.parent))
    if done.returncode != 0:
        raise SystemExit(f"load in {dtype} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(folder: str, dtypes: List[str]) -> str:
    rows = ["| load dtype | weights GiB | load s | RSS before | loaded | after del + gc | after malloc_trim | "
            "left after del |",
            "|---|---|---|---|---|---|---|---|"]
    for dtype in dtypes:
        r = _run_in_child(folder, dtype)
        g = {k: r[k] / GIB for k in ("before", "loaded", "freed", "trimmed", "weights")}
        rows.append(f"| {dtype} | {g['weights']:.2f} | {r['load_s']:.1f} | {g['before']:.2f} | {g['loaded']:.2f} | "
                    f"{g['freed']:.2f} | {g['trimmed']:.2f} | {g['freed'] - g['before']:+.2f} |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a converted model folder (main/ or back_view/ of a weight set)")
    p.add_argument("--dtypes", default="bf16,fp16,fp32",
                   help="comma-separated load dtypes (fp16, bf16, fp32, or 'stored' = as the files are)")
    args = p.parse_args(argv)
    if not (Path(args.folder) / "config.json").is_file():
        p.error(f"{args.folder} is not a converted model folder (no config.json)")
    print(table(args.folder, [d.strip() for d in args.dtypes.split(",") if d.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
