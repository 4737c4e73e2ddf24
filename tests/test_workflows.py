"""Every example workflow fits the node definitions: types exist, links type-check, widget values fit.

Our nodes are read from NODE_CLASS_MAPPINGS; core ComfyUI nodes from
tests/tools/comfy_core_nodes.json (recorded from a stock ComfyUI 0.8.0 /object_info).
The validator is also run on broken copies, so it is known to catch each kind of error.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tools"))

from workflow_graph import (CONTROL_VALUES, combo_values, node_definitions, socket_inputs,  # noqa: E402
                            types_compatible, widget_slots)

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
IMAGES = {p.name for p in (ROOT / "workflows" / "images").iterdir()}
#: Combos whose options depend on the user's disk: any non-empty string is a valid saved value.
DYNAMIC_COMBOS = {("DiffStyle360LoadAppearanceModules", "weight_set"),
                  ("DiffStyle360LoadAppearanceModules", "style_module")}
CAPABILITIES = {
    "01_turntable_one_style", "02_training_free_vs_trained", "03_tau_sweep", "04_local_two_styles",
    "05_style_interpolation", "06_back_view", "07_novel_views_no_style", "08_circular_loop",
}


@pytest.fixture(scope="module")
def defs():
    return node_definitions()


def _check_value(node_type, name, kind, opts, role, value):
    where = f"{node_type}.{name}"
    if role == "control":
        return [] if value in CONTROL_VALUES else [f"{where}: control value {value!r}"]
    if role == "upload":
        return [] if value == "image" else [f"{where}: upload widget value {value!r}"]
    if node_type in ("LoadImage", "LoadImageMask") and name == "image":
        return [] if value in IMAGES else [f"{where}: {value!r} is not in workflows/images/"]
    if (node_type, name) in DYNAMIC_COMBOS:
        return [] if isinstance(value, str) and value else [f"{where}: {value!r} is not a file name"]
    values = combo_values(kind, opts)
    if values is not None:
        return [] if value in values else [f"{where}: {value!r} not in {values}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return [f"{where}: {value!r} is not a number"]
        if kind == "INT" and value != int(value):
            return [f"{where}: {value!r} is not an integer"]
        low, high = opts.get("min", -math.inf), opts.get("max", math.inf)
        return [] if low <= value <= high else [f"{where}: {value!r} outside [{low}, {high}]"]
    return [f"{where}: unknown widget type {kind!r}"]


def validate(workflow: dict, defs: dict) -> list:
    """Problems of a UI-format workflow against the node definitions (empty list = valid)."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind not in defs:
            problems.append(f"node {node['id']}: unknown type {kind}")
            continue
        d = defs[kind]
        slots = widget_slots(d)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            problems.append(f"node {node['id']} {kind}: {len(values)} widget values, definition has {len(slots)}")
        else:
            for (name, wkind, opts, role), value in zip(slots, values):
                problems += _check_value(kind, name, wkind, opts, role, value)
        sockets = {n: (t, req) for n, t, req in socket_inputs(d)}
        for slot in node.get("inputs", []):
            if slot["name"] not in sockets and "widget" not in slot:
                problems.append(f"node {node['id']} {kind}: no input named {slot['name']}")
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for name, (t, required) in sockets.items():
            if required and name not in linked:
                problems.append(f"node {node['id']} {kind}: required input {name} ({t}) is not connected")
        if len(node.get("outputs", [])) > len(d["output"]):
            problems.append(f"node {node['id']} {kind}: {len(node['outputs'])} outputs, definition has "
                            f"{len(d['output'])}")
    seen = set()
    for link in workflow["links"]:
        lid, src, src_slot, dst, dst_slot, ltype = link
        if lid in seen:
            problems.append(f"link {lid}: duplicate id")
        seen.add(lid)
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid}: node {src if src not in nodes else dst} missing")
            continue
        s, t = nodes[src], nodes[dst]
        if s["type"] not in defs or t["type"] not in defs:
            continue
        outs = defs[s["type"]]["output"]
        if src_slot >= len(outs):
            problems.append(f"link {lid}: {s['type']} has no output {src_slot}")
            continue
        out_type = outs[src_slot]
        if ltype != out_type:
            problems.append(f"link {lid}: says type {ltype}, {s['type']} output {src_slot} is {out_type}")
        if lid not in (s["outputs"][src_slot].get("links") or []):
            problems.append(f"link {lid}: not listed on {s['type']} output {src_slot}")
        inputs = t.get("inputs", [])
        if dst_slot >= len(inputs):
            problems.append(f"link {lid}: {t['type']} has no input slot {dst_slot}")
            continue
        slot = inputs[dst_slot]
        if slot.get("link") != lid:
            problems.append(f"link {lid}: {t['type']} input {slot['name']} points at link {slot.get('link')}")
        sockets = {n: ty for n, ty, _ in socket_inputs(defs[t["type"]])}
        in_type = sockets.get(slot["name"])
        if in_type is None:
            problems.append(f"link {lid}: {t['type']}.{slot['name']} is not a linkable input")
        elif not types_compatible(out_type, in_type):
            problems.append(f"link {lid}: {s['type']} {out_type} -> {t['type']}.{slot['name']} {in_type}")
    if not any(defs.get(n["type"], {}).get("output_node") for n in workflow["nodes"]):
        problems.append("no output node (Save/Preview): nothing would run")
    return problems


def test_one_workflow_per_capability():
    assert {p.stem for p in WORKFLOWS} == CAPABILITIES


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_fits_node_definitions(path, defs):
    workflow = json.loads(path.read_text())
    assert workflow.get("version") == 0.4 and workflow["nodes"] and workflow["links"]
    assert validate(workflow, defs) == []


def test_every_node_is_in_some_workflow(defs):
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    ours = {k for k in defs if k.startswith("DiffStyle360")}
    assert len(ours) == 7 and ours <= used, ours - used


def test_workflows_ship_real_defaults():
    """Shared workflows carry the official settings (50 steps, 32 views); tests override them."""
    for path in WORKFLOWS:
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "DiffStyle360StyleFusionSampler":
                assert node["widgets_values"][2] == 50, path.name  # seed, control, steps
            if node["type"] == "DiffStyle360TurntableCamera":
                assert node["widgets_values"][0] == 32, path.name


def _mutations(workflow, defs):
    """Broken copies, one per kind of error the validator must catch."""
    out = {}
    w = copy.deepcopy(workflow)
    next(n for n in w["nodes"] if n["type"] == "DiffStyle360StyleFusionSampler")["widgets_values"].pop()
    out["widget count"] = w
    w = copy.deepcopy(workflow)
    next(n for n in w["nodes"] if n["type"] == "DiffStyle360StyleFusionSampler")["widgets_values"][2] = 5000
    out["steps out of range"] = w
    w = copy.deepcopy(workflow)
    next(n for n in w["nodes"] if n["type"] == "DiffStyle360StyleFusionSampler")["widgets_values"][5] = "plms"
    out["bad scheduler"] = w
    w = copy.deepcopy(workflow)
    next(n for n in w["nodes"] if n["type"] == "LoadImage")["widgets_values"][0] = "missing.png"
    out["image not shipped"] = w
    w = copy.deepcopy(workflow)
    w["nodes"][0]["type"] = "DiffStyle360NoSuchNode"
    out["unknown node"] = w
    w = copy.deepcopy(workflow)
    cam_link = next(link for link in w["links"] if link[5] == "DS360_CAMERAS")
    model_link = next(link for link in w["links"] if link[5] == "DS360_MODEL")
    # plug the model output into the cameras input
    cam_link[1], cam_link[2], cam_link[5] = model_link[1], model_link[2], "DS360_MODEL"
    out["type mismatch"] = w
    w = copy.deepcopy(workflow)
    sampler = next(n for n in w["nodes"] if n["type"] == "DiffStyle360StyleFusionSampler")
    slot = next(s for s in sampler["inputs"] if s["name"] == "content")
    w["links"] = [link for link in w["links"] if link[0] != slot["link"]]
    slot["link"] = None
    out["required input missing"] = w
    return out


def test_validator_catches_broken_workflows(defs):
    workflow = json.loads((ROOT / "workflows" / "01_turntable_one_style.json").read_text())
    assert validate(workflow, defs) == []
    for what, broken in _mutations(workflow, defs).items():
        assert validate(broken, defs), f"validator missed: {what}"


def test_union_style_input_accepts_image_and_style():
    assert types_compatible("IMAGE", "IMAGE,DS360_STYLE")
    assert types_compatible("DS360_STYLE", "IMAGE,DS360_STYLE")
    assert not types_compatible("MASK", "IMAGE,DS360_STYLE")


def test_api_conversion_matches_widgets_by_name(defs):
    """tests/tools/workflow_to_api.py (used for the real-host run; checked against the frontend's own
    graphToPrompt there) maps positional widget values to input names, skipping frontend-only values."""
    from workflow_to_api import to_api

    workflow = json.loads((ROOT / "workflows" / "04_local_two_styles.json").read_text())
    prompt = to_api(workflow, defs, {"DiffStyle360StyleFusionSampler": {"steps": 2}})
    masks = [e["inputs"] for e in prompt.values() if e["class_type"] == "LoadImageMask"]
    assert {m["channel"] for m in masks} == {"red"} and {m["image"] for m in masks} <= IMAGES
    (sampler,) = [e["inputs"] for e in prompt.values() if e["class_type"] == "DiffStyle360StyleFusionSampler"]
    assert sampler["steps"] == 2 and sampler["seed"] == 42 and sampler["scheduler"] == "ddim"
    assert "control_after_generate" not in sampler and isinstance(sampler["style"], list)
    chained = [e["inputs"] for e in prompt.values() if e["class_type"] == "DiffStyle360StyleMask"]
    assert sum("previous" in m for m in chained) == 1
