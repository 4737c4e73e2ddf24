"""Record the core ComfyUI node definitions the example workflows use into comfy_core_nodes.json.

    python tests/tools/record_core_nodes.py --server http://127.0.0.1:8188 [TYPE ...]

Reads ``GET /object_info`` of a running stock ComfyUI and keeps, for each node type
(the given ones plus every core type already in the file), the fields the workflow
tools read. LoadImage/LoadImageMask file lists are replaced by a placeholder: they
are the host's input folder, which the tests model with workflows/images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_graph import CORE_NODES  # noqa: E402
from workflow_to_api import server_definitions  # noqa: E402

KEPT = ("category", "input", "input_order", "output", "output_name", "output_node")
FILE_LISTS = ("LoadImage", "LoadImageMask")
PLACEHOLDER = "<files in ComfyUI/input: the workflow images>"


def trimmed(name: str, definition: dict) -> dict:
    out = {k: definition[k] for k in KEPT if k in definition}
    if name in FILE_LISTS:
        spec = out["input"]["required"]["image"]
        out["input"]["required"]["image"] = [[PLACEHOLDER], *spec[1:]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("types", nargs="*", help="node types to add")
    args = ap.parse_args()
    recorded = json.loads(CORE_NODES.read_text())
    live = server_definitions(args.server)
    for name in sorted(set(recorded["nodes"]) | set(args.types)):
        if name not in live:
            raise SystemExit(f"{name} is not a node type of the server at {args.server}")
        recorded["nodes"][name] = trimmed(name, live[name])
    recorded["nodes"] = dict(sorted(recorded["nodes"].items()))
    CORE_NODES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(f"{CORE_NODES.name}: {len(recorded['nodes'])} node types")


if __name__ == "__main__":
    main()
