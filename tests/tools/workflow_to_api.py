"""Convert a UI-format workflow (workflows/*.json) to ComfyUI's API "prompt" format.

    python tests/tools/workflow_to_api.py workflows/01_turntable_one_style.json [--server http://127.0.0.1:8188]
        [--set DiffStyle360StyleFusionSampler.steps=2 ...]

Node definitions come from a running server's ``/object_info`` (``--server``) or,
without one, from tests/tools/workflow_graph.py (our V3 schemas + the recorded
core nodes). Widget values are matched to input names in definition order, skipping
the frontend-only values (control-after-generate, upload button); links become
``[source node id, output index]`` (a link into a widget, e.g. from an Int primitive, replaces its
value). Muted (mode 2), bypassed (mode 4) and frontend-only nodes (notes) are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_graph import FRONTEND_WIDGETS, INACTIVE_MODES, VIRTUAL_NODES, widget_slots  # noqa: E402


def server_definitions(server: str) -> Dict[str, dict]:
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        return json.load(r)


def local_definitions() -> Dict[str, dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from workflow_graph import node_definitions

    return node_definitions()


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def to_api(workflow: dict, defs: Dict[str, dict], overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> dict:
    """UI workflow → API prompt. ``overrides``: {node type: {input name: value or callable(old) -> new}}."""
    overrides = overrides or {}
    active = {n["id"]: n for n in workflow["nodes"]
              if n.get("mode", 0) not in INACTIVE_MODES and n["type"] not in VIRTUAL_NODES}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for nid, node in active.items():
        kind = node["type"]
        if kind not in defs:
            raise KeyError(f"node {nid}: type {kind} is not installed")
        inputs: Dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        if kind in FRONTEND_WIDGETS:
            values = []  # the frontend's own widgets: not inputs of the node
        slots = widget_slots(defs[kind])
        if len(values) != len(slots):
            raise ValueError(f"node {nid} {kind}: {len(values)} widget values for {len(slots)} widgets")
        for (name, _, _, role), value in zip(slots, values):
            if role == "value":
                inputs[name] = value
        for slot in node.get("inputs", []):
            link_id = slot.get("link")
            if link_id is None:
                continue
            _, src, src_slot, _, _, _ = links[link_id]
            if src not in active:
                continue  # a muted source: the input stays unconnected
            inputs[slot["name"]] = [str(src), src_slot]
        for name, new in overrides.get(kind, {}).items():
            if name in inputs:
                inputs[name] = new(inputs[name]) if callable(new) else new
        entry = {"class_type": kind, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(nid)] = entry
    return prompt


def parse_sets(items: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for item in items:
        target, _, value = item.partition("=")
        kind, _, name = target.partition(".")
        out.setdefault(kind, {})[name] = parse_value(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workflow")
    ap.add_argument("--server", help="take node definitions from this ComfyUI's /object_info")
    ap.add_argument("--set", action="append", default=[], metavar="TYPE.INPUT=VALUE")
    args = ap.parse_args()
    defs = server_definitions(args.server) if args.server else local_definitions()
    workflow = json.loads(Path(args.workflow).read_text())
    print(json.dumps(to_api(workflow, defs, parse_sets(args.set)), indent=1))


if __name__ == "__main__":
    main()
