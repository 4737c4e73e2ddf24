"""Load every example workflow in the real ComfyUI frontend (headless Chromium) and compare.

    python tests/tools/frontend_check.py --server http://127.0.0.1:8188 [--screenshot out.png]

For each workflows/*.json: ``app.loadGraphData`` then ``app.graphToPrompt()`` (the
frontend's own UI → API conversion). The result is compared with
workflow_to_api.py's conversion (node types, widget values by name, links), and
the frontend's re-serialized widgets_values with the file's. Optionally takes a
screenshot of the first workflow. Needs playwright (ComfyUI's venv has it) and
/usr/bin/chromium; loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_to_api import server_definitions, to_api  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
APP = "((window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app) || window.app)"


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
                    return {{output: p.output,
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
                if other["inputs"] != entry["inputs"]:
                    diffs.append(f"node {nid} {entry['class_type']}: frontend {other['inputs']} vs ours "
                                 f"{entry['inputs']}")
            for node in workflow["nodes"]:
                fw = result["widgets"].get(str(node["id"])) or result["widgets"].get(node["id"])
                if (fw or []) != node.get("widgets_values", []):
                    diffs.append(f"node {node['id']} {node['type']}: widgets re-serialized as {fw}, file has "
                                 f"{node.get('widgets_values')}")
            extra = set(theirs) - set(ours)
            if extra:
                diffs.append(f"frontend prompt has extra nodes {sorted(extra)}")
            problems += len(diffs)
            print(f"{path.stem}: {'same as workflow_to_api' if not diffs else 'DIFFERENT'}")
            for d in diffs:
                print("   ", d)
        if args.screenshot:  # a fresh page with only the first workflow, fitted to the window
            page = browser.new_page(viewport={"width": 1600, "height": 900})
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
            page.mouse.click(1500, 850)  # focus the canvas, then the "fit view" shortcut
            page.keyboard.press(".")
            page.wait_for_timeout(1500)
            page.screenshot(path=args.screenshot)
            print("screenshot", args.screenshot, Path(args.screenshot).stat().st_size, "bytes")
        browser.close()
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
