"""Who owns the models inside a running ComfyUI: process RSS and ComfyUI's loaded-model list, step by step.

    python tests/tools/measure_host_memory.py --server http://127.0.0.1:8188 --sets sd15_a,sd15_b \
        --style-module sd15_a/style_module-sd15.safetensors --dtype bf16

Needs ``comfy_memory_probe.py`` in that ComfyUI's custom_nodes/ (it reports RSS, the loaded
models and the DiffStyle360 models still alive). The steps are issue 15's: the server before
loading; after workflow 01 (training-free); after workflow 02 with its trained branch
un-muted; after ``/free`` (unload_models + free_memory); then workflow 06 alternating between
two weight sets (``--alternations`` runs) and ``/free`` again. After each ``/free`` the probe
also runs glibc's ``malloc_trim(0)`` and records RSS again (freed memory the allocator had kept).
``--warm-up-set`` first runs 01 and 02 once with another (small) set and frees it, so the
modules every first run imports (video encoding, diffusers' lazily imported blocks…) are in
the "warm" baseline. Every workflow runs with the
loader's dtype widget set to ``--dtype`` and sampling lowered to ``--steps``/``--cfg``/``--views``
(memory does not depend on them). Prints a Markdown table; ``--json`` keeps the raw points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_workflows_on_host import get, post, run_one, unmute  # noqa: E402
from workflow_to_api import server_definitions, to_api  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = {"01": "01 Turntable in one style.json", "02": "02 Training-free vs trained style module.json",
             "06": "06 Back of the head from a portrait.json"}


def prompt_for(name: str, defs: dict, args, weight_set: str, style_module: str) -> dict:
    workflow = json.loads((ROOT / "workflows" / WORKFLOWS[name]).read_text())
    unmute(workflow)  # 02's trained branch on, as for a user with a style module
    sampler = {"steps": args.steps, "cfg": args.cfg}
    return to_api(workflow, defs, {
        "DiffStyle360LoadAppearanceModules": {
            "weight_set": weight_set, "dtype": args.dtype,
            "style_module": lambda v: v if v.startswith("none") else style_module},
        "DiffStyle360StyleFusionSampler": sampler,
        "DiffStyle360BackViewGenerate": sampler,
        "DiffStyle360TurntableCamera": {"views": args.views},
    })


def loaded_text(models: list) -> str:
    return ", ".join(f"{m['class']} {m['size_mb']:.0f}" for m in models) or "none"


def probe(server: str) -> dict:
    try:
        return get(server, "/ds360_probe/loaded")
    except OSError as err:
        raise SystemExit(f"no /ds360_probe/loaded on {server} ({err}); link tests/tools/comfy_memory_probe.py into "
                         "that ComfyUI's custom_nodes/ and restart it") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--sets", required=True, help="two weight sets, comma separated (the first runs 01 and 02)")
    ap.add_argument("--style-module", required=True, help="the loader's style_module choice for 02's trained branch")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--alternations", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--warm-up-set", help="a weight set (e.g. make-tiny --size small) run once before measuring")
    ap.add_argument("--warm-up-style-module", help="the style_module choice for the warm-up's 02")
    ap.add_argument("--json")
    args = ap.parse_args()
    server = args.server.rstrip("/")
    first, second = args.sets.split(",")
    defs = server_definitions(server)
    points = []

    def record(step: str, seconds=None):
        p = probe(server)
        loaded = loaded_text(p["loaded"])
        points.append({"step": step, "rss_gib": p["rss_gib"], "live": p["live_diffstyle360_models"],
                       "loaded": p["loaded"], "seconds": seconds})
        print(f"{step}: RSS {p['rss_gib']:.2f} GiB, live {p['live_diffstyle360_models']}, loaded: {loaded}"
              + (f", {seconds:.0f} s" if seconds is not None else ""), flush=True)

    def run(name: str, weight_set: str, step: str, style_module: str = args.style_module):
        result = run_one(server, prompt_for(name, defs, args, weight_set, style_module), args.timeout)
        if result["status"] != "ran":
            raise SystemExit(f"{step}: {result['status']} {result.get('error', '')}")
        record(step, result["seconds"])

    def free(step: str):
        post(server, "/free", {"unload_models": True, "free_memory": True})
        time.sleep(3)  # ComfyUI frees on its worker thread between prompts
        record(step)
        trimmed = post(server, "/ds360_probe/trim", {})
        points.append({"step": "… then malloc_trim(0) (probe)", "rss_gib": trimmed["after"], "live": "",
                       "loaded": [], "seconds": None})
        print(f"malloc_trim(0): RSS {trimmed['before']:.2f} → {trimmed['after']:.2f} GiB", flush=True)

    record("started, before loading")
    if args.warm_up_set:
        run("01", args.warm_up_set, f"warm-up: workflow 01 ({args.warm_up_set})")
        run("02", args.warm_up_set, f"warm-up: workflow 02 ({args.warm_up_set})", args.warm_up_style_module)
        free("warm-up: after /free (the warm baseline)")
    run("01", first, f"after workflow 01 ({first})")
    run("02", first, f"after workflow 02, trained branch un-muted ({first})")
    free("after /free")
    for i in range(args.alternations):
        ws = (first, second)[i % 2]
        run("06", ws, f"06_back_view run {i + 1} ({ws})")
    free("after /free")
    print("\n| step | RSS GiB | live DiffStyle360 models | ComfyUI's loaded models (MB) | wall s |")
    print("|---|---|---|---|---|")
    for p in points:
        loaded = loaded_text(p["loaded"]) if p["live"] != "" else ""
        wall = f"{p['seconds']:.0f}" if p["seconds"] is not None else ""
        print(f"| {p['step']} | {p['rss_gib']:.2f} | {p['live']} | {loaded} | {wall} |")
    if args.json:
        Path(args.json).write_text(json.dumps(points, indent=1))


if __name__ == "__main__":
    main()
