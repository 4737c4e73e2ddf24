"""Serve the tests' fake Hugging Face hub (tiny official-format files) for a real-host check of the download.

    python tests/tools/serve_fake_hub.py [--cut-main BYTES]

Prints the URL; start ComfyUI with ``HF_ENDPOINT=<url>``, pick ``diffportrait360`` in
Load Appearance Modules and Queue: the loader downloads the tiny set into the models
folder (the ``diffstyle360:`` folder of extra_model_paths.yaml when set). Every request
is printed. Loopback only; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_download import MAIN_TH, FakeHub, official_hub_files  # noqa: E402

from diffstyle360_core.tiny import make_tiny  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cut-main", type=int, default=0, help="cut the first download of the main file after N bytes")
    args = ap.parse_args()
    tiny = Path(tempfile.mkdtemp(prefix="fake-hub-")) / "tiny"
    make_tiny(tiny)
    hub = FakeHub(official_hub_files(tiny))
    if args.cut_main:
        hub.drop_once[MAIN_TH] = args.cut_main
    print(f"fake hub at {hub.url}  (HF_ENDPOINT={hub.url})", flush=True)
    shown = 0
    try:
        while True:
            time.sleep(0.5)
            for request in hub.requests[shown:]:
                print(request, flush=True)
            shown = len(hub.requests)
    except KeyboardInterrupt:
        hub.close()


if __name__ == "__main__":
    main()
