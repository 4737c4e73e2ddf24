"""Queue every example workflow on a running ComfyUI through the HTTP API and report the results.

    python tests/tools/run_workflows_on_host.py --server http://127.0.0.1:8188 --comfy /tmp/comfy \
        --weight-set tiny --steps 2 --views 4

Checks that the pack put the example images into ComfyUI's input folder (it does so
at start-up; nothing is copied here), converts each workflow to the API format
(workflow_to_api.py) with the weight set picked as a user would (``--weight-set``) and
steps/views lowered for the tiny weights, POSTs it to /prompt, polls /history and
prints a table: workflow, ran/failed, output files, seconds (queue to finish).
``--unmute`` first un-mutes every node (the user's Ctrl+M on workflow 02's trained
branch, with the tiny set's style module picked). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_to_api import server_definitions, to_api  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nodes.examples import input_name  # noqa: E402

TRAINING_FREE = "none (training-free)"


def post(server: str, path: str, payload: dict) -> dict:
    req = urllib.request.Request(server + path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body = r.read()
            return json.loads(body) if body.strip() else {}
    except urllib.error.HTTPError as err:
        return {"http_error": err.code, "body": json.loads(err.read() or b"{}")}


def get(server: str, path: str) -> dict:
    with urllib.request.urlopen(server + path, timeout=60) as r:
        return json.load(r)


def overrides(weight_set: str, steps: int, views: int) -> dict:
    sampler = {"steps": steps}
    return {
        "DiffStyle360LoadAppearanceModules": {
            "weight_set": weight_set,
            "style_module": lambda v: v if v == TRAINING_FREE else f"{weight_set}/style_module-tiny.safetensors",
        },
        "DiffStyle360StyleFusionSampler": sampler,
        "DiffStyle360BackViewGenerate": sampler,
        "DiffStyle360TurntableCamera": {"views": views},
    }


def unmute(workflow: dict) -> None:
    """Every node on (mode 0): what a user's Ctrl+M does to workflow 02's muted trained branch."""
    for node in workflow["nodes"]:
        node["mode"] = 0


def run_one(server: str, prompt: dict, timeout: float) -> dict:
    client = str(uuid.uuid4())
    start = time.time()
    answer = post(server, "/prompt", {"prompt": prompt, "client_id": client})
    if "prompt_id" not in answer:
        return {"status": "rejected", "error": json.dumps(answer)[:800], "seconds": 0.0, "outputs": 0}
    pid = answer["prompt_id"]
    while time.time() - start < timeout:
        time.sleep(0.5)
        hist = get(server, f"/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            entry = hist[pid]
            if entry["status"].get("status_str") != "success" and not entry["status"].get("completed"):
                msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                err = msgs[0][1] if msgs else {}
                return {"status": "failed", "seconds": time.time() - start, "outputs": 0,
                        "error": f"{err.get('node_type')}: {err.get('exception_type')}: {err.get('exception_message')}"}
            files = [item["filename"] for out in entry.get("outputs", {}).values() for items in out.values()
                     if isinstance(items, list) for item in items if isinstance(item, dict) and "filename" in item]
            texts = [text for out in entry.get("outputs", {}).values() for text in out.get("text", [])]
            return {"status": "ran", "seconds": time.time() - start, "outputs": len(files), "files": files,
                    "texts": texts}
    return {"status": "timeout", "seconds": time.time() - start, "outputs": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--comfy", required=True, help="the ComfyUI folder (its input/ receives the workflow images)")
    ap.add_argument("--weight-set", default="tiny")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--fresh", action="store_true",
                    help="POST /free before each workflow so ComfyUI re-runs every node (no cached outputs)")
    ap.add_argument("--unmute", action="store_true", help="un-mute every node (02's trained branch) first")
    ap.add_argument("workflows", nargs="*")
    args = ap.parse_args()
    server = args.server.rstrip("/")
    missing = [input_name(p.name) for p in (ROOT / "workflows" / "images").iterdir()
               if not (Path(args.comfy) / "input" / input_name(p.name)).is_file()]
    if missing:
        raise SystemExit(f"the pack did not install {missing} into {args.comfy}/input at start-up")
    defs = server_definitions(server)
    paths = [Path(p) for p in args.workflows] or sorted((ROOT / "workflows").glob("*.json"))
    results = {}
    for path in paths:
        workflow = json.loads(path.read_text())
        if args.unmute:
            unmute(workflow)
        prompt = to_api(workflow, defs, overrides(args.weight_set, args.steps, args.views))
        if args.fresh:
            post(server, "/free", {"unload_models": True, "free_memory": True})
            time.sleep(1)
        results[path.stem] = run_one(server, prompt, args.timeout)
        r = results[path.stem]
        print(f"{path.stem}: {r['status']}, {r['outputs']} output files, {r['seconds']:.1f} s"
              + (f" — {r['error']}" if r.get("error") else ""), flush=True)
    print("\n| workflow | result | output files | seconds |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['status']} | {r['outputs']} | {r['seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
