"""Node definitions and the two workflow formats, shared by the workflow tools and tests/test_workflows.py.

* :func:`node_definitions` — every node type the example workflows may use, in the
  shape of ComfyUI's ``GET /object_info``: ours from their V3 schemas, the core
  ones from ``comfy_core_nodes.json`` (recorded from a stock ComfyUI 0.8.0).
* :func:`widget_names` — the widget inputs of a node in the order the frontend stores
  them in ``widgets_values`` (host facts §2.6: positional), including the extra
  "control after generate" value behind seed widgets and the upload button value
  behind LoadImage's file combo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
CORE_NODES = Path(__file__).with_name("comfy_core_nodes.json")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
#: Frontend-only node types: drawn in the graph, never sent to the server (no /object_info entry).
VIRTUAL_NODES = {"Note", "MarkdownNote"}
#: Widgets the frontend itself adds to a core node (not in /object_info) and re-serializes in widgets_values:
#: Preview as Text's text area, markdown view and mode toggle (frontend 1.35's Comfy.PreviewAny extension).
FRONTEND_WIDGETS = {"PreviewAny": [None, None, False]}
#: LiteGraph modes that leave a node out of the prompt: muted ("never") and bypassed.
INACTIVE_MODES = (2, 4)
#: Height of a node's title bar above its ``pos`` (LiteGraph.NODE_TITLE_HEIGHT).
TITLE_HEIGHT = 30


def _our_definitions() -> Dict[str, dict]:
    """Our nodes exactly as ``GET /object_info`` sends them (the V3 schema's ``GET_NODE_INFO_V1``)."""
    import nodes  # the pack's node package (tests put the repository root on sys.path)

    return {info["name"]: info for info in (cls.GET_NODE_INFO_V1() for cls in nodes.NODE_LIST)}


def node_definitions() -> Dict[str, dict]:
    core = json.loads(CORE_NODES.read_text())["nodes"]
    return {**core, **_our_definitions()}


def ordered_inputs(definition: dict) -> List[Tuple[str, Any, dict, bool]]:
    """(name, type, options, required) in definition order."""
    out = []
    for section in ("required", "optional"):
        spec = definition["input"].get(section, {})
        for name in definition.get("input_order", {}).get(section, list(spec)):
            entry = spec[name]
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, kind, opts, section == "required"))
    return out


def is_widget(kind: Any, opts: dict) -> bool:
    if isinstance(kind, list):
        return True
    return kind in WIDGET_TYPES and not opts.get("forceInput", False)


def combo_values(kind: Any, opts: dict):
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return opts.get("options", [])
    return None


def widget_slots(definition: dict) -> List[Tuple[str, Any, dict, str]]:
    """Widget values in ``widgets_values`` order: (input name, type, options, role); role is "value",
    "control" (the control-after-generate value behind a seed) or "upload" (LoadImage's button, added after the
    other widgets)."""
    slots, uploads = [], []
    for name, kind, opts, _ in ordered_inputs(definition):
        if not is_widget(kind, opts):
            continue
        slots.append((name, kind, opts, "value"))
        if kind == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
            slots.append((name, kind, opts, "control"))
        if opts.get("image_upload"):
            uploads.append((name, kind, opts, "upload"))  # the frontend adds the upload button last
    return slots + uploads


def widget_types(definition: dict) -> Dict[str, str]:
    """Widget name → the type a link into it must carry (a widget can take a link, e.g. from an Int primitive)."""
    return {name: ("COMBO" if isinstance(kind, list) else kind)
            for name, kind, _, role in widget_slots(definition) if role == "value"}


def socket_inputs(definition: dict) -> List[Tuple[str, str, bool]]:
    """Linkable (non-widget) inputs in slot order: (name, type, required)."""
    return [(n, k, req) for n, k, o, req in ordered_inputs(definition) if not is_widget(k, o)]


def types_compatible(output_type: str, input_type: str) -> bool:
    """The host's rule (comfy_execution/validation.py): equal, '*', or overlapping comma-separated unions."""
    if output_type == input_type or "*" in (output_type, input_type):
        return True
    a = {t.strip() for t in output_type.split(",")}
    b = {t.strip() for t in input_type.split(",")}
    return bool(a & b)
