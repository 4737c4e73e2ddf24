"""Load every example workflow in the real ComfyUI frontend (headless Chromium) and compare.

    python tests/tools/frontend_check.py --server http://127.0.0.1:8188 [--screenshot out.png]

For each workflows/*.json: ``app.loadGraphData`` then ``app.graphToPrompt()`` (the
frontend's own UI → API conversion). The result is compared with
workflow_to_api.py's conversion (node types, widget values by name, links), and
the frontend's re-serialized widgets_values with the file's; node rectangles are
checked for overlaps at the size the frontend draws (at least ``computeSize()``).
Then, on an empty canvas: the "control after generate" value of newly created seed
nodes (Back-View Generate "fixed", the sampler the host's "randomize"), and the node
search box (double-click, type) for the words users search for. Optionally takes a
screenshot of the first workflow. Needs playwright (ComfyUI's venv has it) and
/usr/bin/chromium; loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_graph import FRONTEND_WIDGETS  # noqa: E402
from workflow_to_api import server_definitions, to_api  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
APP = "((window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app) || window.app)"
#: search words → the node each must find
SEARCHES = {"style transfer": "Style Transfer", "model loader": "Model Loader", "load model": "Model Loader",
            "turntable": "Turntable Camera", "360": "DiffStyle360", "sampler": "Style Fusion Sampler"}
EXPECTED_CONTROL = {"DiffStyle360BackViewGenerate": "fixed", "DiffStyle360StyleFusionSampler": "randomize"}


def drawn_overlaps(rects) -> list:
    """Pairs of frontend node rectangles (x, y, w, h with the title bar) that overlap."""
    out = []
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > 0 and dy > 0:
                out.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap by {dx:.0f}x{dy:.0f} px")
    return out


def search(page, query: str, want: str) -> list:
    """The node search box's results for ``query`` (double-click on the empty canvas, type).

    The box searches after a debounce and a loaded machine shows the previous list for a
    while, so the list is read until it holds ``want`` or 10 seconds have passed.
    """
    page.keyboard.press("Escape")
    page.mouse.dblclick(800, 450)
    page.wait_for_timeout(1200)
    page.keyboard.type(query, delay=30)
    found = []
    for _ in range(20):
        page.wait_for_timeout(500)
        found = page.evaluate("() => Array.from(document.querySelectorAll('[role=option]'))"
                              ".map(e => e.innerText.replace(/\\s+/g, ' ').trim()).filter(t => t)")
        if any(want in text and "DiffStyle360" in text for text in found):
            break
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    return found


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--screenshot")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    defs = server_definitions(args.server)
    paths = sorted((ROOT / "workflows").glob("*.json"))
    problems = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(args.server, wait_until="networkidle", timeout=120_000)
        page.wait_for_function(f"() => {{ const a = {APP}; return a && a.graph; }}", timeout=120_000)
        # node definitions arrive after the app object: wait for ours before loading anything
        page.wait_for_function("() => window.LiteGraph && "
                               "LiteGraph.registered_node_types['DiffStyle360StyleFusionSampler']", timeout=120_000)
        for path in paths:
            workflow = json.loads(path.read_text())
            result = page.evaluate(
                f"""async (wf) => {{
                    const app = {APP};
                    await app.loadGraphData(wf);
                    const p = await app.graphToPrompt();
                    const s = app.graph.serialize();
                    const title = LiteGraph.NODE_TITLE_HEIGHT;
                    const rects = app.graph._nodes.map(n => {{
                        const min = n.computeSize();
                        return {{id: n.id, type: n.type, x: n.pos[0], y: n.pos[1] - title,
                                 w: Math.max(n.size[0], min[0]), h: Math.max(n.size[1], min[1]) + title,
                                 grew: [Math.max(0, min[0] - n.size[0]), Math.max(0, min[1] - n.size[1])]}};
                    }});
                    return {{output: p.output, rects,
                             widgets: Object.fromEntries(s.nodes.map(n => [n.id, n.widgets_values]))}};
                }}""",
                workflow,
            )
            ours = to_api(workflow, defs)
            theirs = result["output"]
            diffs = []
            for nid, entry in ours.items():
                other = theirs.get(nid)
                if other is None:
                    diffs.append(f"node {nid} missing in the frontend's prompt")
                    continue
                if other["class_type"] != entry["class_type"]:
                    diffs.append(f"node {nid}: {other['class_type']} != {entry['class_type']}")
                spec = defs[entry["class_type"]]["input"]
                known = {n for section in ("required", "optional") for n in spec.get(section, {})}
                other["inputs"] = {k: v for k, v in other["inputs"].items() if k in known}  # frontend-only widgets
                if other["inputs"] != entry["inputs"]:
                    diffs.append(f"node {nid} {entry['class_type']}: frontend {other['inputs']} vs ours "
                                 f"{entry['inputs']}")
            for node in workflow["nodes"]:
                if node["type"] in FRONTEND_WIDGETS:
                    continue  # the frontend's own preview widgets: not idempotent, never sent to the server
                fw = result["widgets"].get(str(node["id"])) or result["widgets"].get(node["id"])
                if (fw or []) != node.get("widgets_values", []):
                    diffs.append(f"node {node['id']} {node['type']}: widgets re-serialized as {fw}, file has "
                                 f"{node.get('widgets_values')}")
            extra = set(theirs) - set(ours)
            if extra:
                diffs.append(f"frontend prompt has extra nodes {sorted(extra)}")
            diffs += drawn_overlaps(result["rects"])
            grown = [f"{r['id']} {r['type']} +{r['grew']}" for r in result["rects"] if any(r["grew"])]
            if grown:
                print("    drawn larger than stored:", ", ".join(grown))
            problems += len(diffs)
            print(f"{path.stem}: {'same as workflow_to_api' if not diffs else 'DIFFERENT'}")
            for d in diffs:
                print("   ", d)
        page.evaluate(f"() => {{ {APP}.graph.clear(); }}")
        controls = page.evaluate("""(types) => Object.fromEntries(types.map(t => {
            const n = LiteGraph.createNode(t);
            const w = (n.widgets || []).find(w => w.name === 'control_after_generate');
            return [t, w ? w.value : null]; }))""", list(EXPECTED_CONTROL))
        for kind, want in EXPECTED_CONTROL.items():
            ok = controls.get(kind) == want
            problems += not ok
            print(f"new {kind}: control after generate = {controls.get(kind)!r} ({'ok' if ok else 'expected ' + want})")
        for query, want in SEARCHES.items():
            found = search(page, query, want)
            hits = [i for i, text in enumerate(found) if want in text and "DiffStyle360" in text]
            problems += not hits
            print(f"search {query!r}: {f'result {hits[0] + 1} of {len(found)}' if hits else f'NOT FOUND in {found}'}")
        if args.screenshot:  # a fresh page with only the first workflow, fitted to the window
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(args.server, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("() => window.LiteGraph && "
                                   "LiteGraph.registered_node_types['DiffStyle360StyleFusionSampler']",
                                   timeout=120_000)
            page.wait_for_timeout(3000)  # let the frontend restore its last/default workflow first
            first = json.loads(paths[0].read_text())
            for _ in range(5):
                page.evaluate(f"async (wf) => {{ await {APP}.loadGraphData(wf); }}", first)
                page.wait_for_timeout(1500)
                if page.evaluate(f"() => {APP}.graph._nodes.some(n => n.type === 'DiffStyle360StyleFusionSampler')"):
                    break
            page.evaluate(f"""async () => {{ try {{
                await {APP}.extensionManager.setting.set('Comfy.Minimap.Visible', false); }} catch (e) {{}} }}""")
            page.keyboard.press("Escape")
            # the whole graph at a zoom the canvas still draws text at (below ~0.6 it draws boxes only)
            page.evaluate(f"""() => {{ const c = {APP}.canvas; c.ds.scale = 0.62; c.ds.offset = [90, 60];
                                        c.setDirty(true, true); }}""")
            page.wait_for_timeout(1500)
            page.screenshot(path=args.screenshot)
            print("screenshot", args.screenshot, Path(args.screenshot).stat().st_size, "bytes")
        browser.close()
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
