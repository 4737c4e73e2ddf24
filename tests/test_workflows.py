"""Every example workflow runs as shipped on a fresh install and teaches: checked against the node definitions.

Our nodes are read from their V3 schemas with a fresh ``make-tiny`` set as the only
weight set on disk (plus ``diffportrait360``, the official set the loader always offers:
it downloads on first use), and ComfyUI's input folder filled the way the pack fills it
at start-up; core nodes come from tests/tools/comfy_core_nodes.json (recorded from a
stock ComfyUI 0.8.0 /object_info). The validator is also run on broken copies, so it is
known to catch each kind of error.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tools"))

from workflow_graph import (CONTROL_VALUES, FRONTEND_WIDGETS, INACTIVE_MODES, TITLE_HEIGHT,  # noqa: E402
                            VIRTUAL_NODES, combo_values, node_definitions, socket_inputs, types_compatible,
                            widget_slots, widget_types)

from nodes import examples, host, loader  # noqa: E402

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
OFFICIAL_SET = "diffportrait360"
LOADER = "DiffStyle360LoadAppearanceModules"
SAMPLER = "DiffStyle360StyleFusionSampler"
CAPABILITIES = {
    "01 Turntable in one style", "02 Training-free vs trained style module",
    "03 Style strength sweep (tau)", "04 Two styles on two regions (masks)",
    "05 Style interpolation between two styles", "06 Back of the head from a portrait",
    "07 Novel views without a style", "08 Seamless 360 loop (circular windows)",
}
COMPARISONS = ("03 Style strength sweep (tau)", "05 Style interpolation between two styles")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def by_stem(stem: str) -> dict:
    return load(ROOT / "workflows" / f"{stem}.json")


@pytest.fixture(scope="module")
def fresh_install(tiny_weights, tmp_path_factory):
    """A ComfyUI as a new user has it: one make-tiny set in models/diffstyle360, the pack's images in input/."""
    models = tmp_path_factory.mktemp("models_diffstyle360")
    os.symlink(tiny_weights, models / "tiny")
    input_dir = tmp_path_factory.mktemp("comfy_input")
    copied = examples.install_example_images(str(input_dir))
    host.set_fallback_models_dir(models)
    host.unload_all_models()
    yield {"input_files": sorted(os.listdir(input_dir)), "copied": copied}
    host.unload_all_models()


@pytest.fixture(scope="module")
def defs(fresh_install):
    """Node definitions on the fresh install: the loader's lists and Load Image's files as the host would show them."""
    out = node_definitions()
    out = copy.deepcopy(out)
    weight_sets = combo_values(*out[LOADER]["input"]["required"]["weight_set"])
    if OFFICIAL_SET not in weight_sets:  # the loader lists it even before the download
        weight_sets.append(OFFICIAL_SET)
    for kind in ("LoadImage", "LoadImageMask"):
        out[kind]["input"]["required"]["image"][0] = fresh_install["input_files"]
    return out


def _check_value(node_type, name, kind, opts, role, value):
    where = f"{node_type}.{name}"
    if role == "control":
        return [] if value in CONTROL_VALUES else [f"{where}: control value {value!r}"]
    if role == "upload":
        return [] if value == "image" else [f"{where}: upload widget value {value!r}"]
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


def notes(workflow: dict) -> list:
    return [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in VIRTUAL_NODES]


def validate(workflow: dict, defs: dict) -> list:
    """Problems of a UI-format workflow against the node definitions (empty list = valid).

    Every widget value must be in its list or range. A muted node may name a file the
    user has yet to make only when a note of the workflow names that file and says how.
    """
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    explained = " ".join(notes(workflow))
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in VIRTUAL_NODES:
            if not (node.get("widgets_values") or [""])[0].strip():
                problems.append(f"node {node['id']}: empty note")
            continue
        if kind not in defs:
            problems.append(f"node {node['id']}: unknown type {kind}")
            continue
        d = defs[kind]
        slots = widget_slots(d)
        values = node.get("widgets_values", [])
        if kind in FRONTEND_WIDGETS:
            if values != FRONTEND_WIDGETS[kind]:
                problems.append(f"node {node['id']} {kind}: widgets {values}, the frontend writes "
                                f"{FRONTEND_WIDGETS[kind]}")
        elif len(values) != len(slots):
            problems.append(f"node {node['id']} {kind}: {len(values)} widget values, definition has {len(slots)}")
        else:
            for (name, wkind, opts, role), value in zip(slots, values):
                found = _check_value(kind, name, wkind, opts, role, value)
                if found and node.get("mode", 0) in INACTIVE_MODES and isinstance(value, str) and value in explained:
                    continue  # a muted branch waiting for a file the workflow's note tells how to make
                problems += [f"node {node['id']} {p}" for p in found]
        sockets = {n: (t, req) for n, t, req in socket_inputs(d)}
        widgets = widget_types(d)
        for slot in node.get("inputs", []):
            if slot["name"] in sockets:
                continue
            if "widget" in slot and slot["name"] in widgets:
                continue
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
        if "widget" in slot:
            sockets = widget_types(defs[t["type"]])
        in_type = sockets.get(slot["name"])
        if in_type is None:
            problems.append(f"link {lid}: {t['type']}.{slot['name']} is not a linkable input")
        elif not types_compatible(out_type, in_type):
            problems.append(f"link {lid}: {s['type']} {out_type} -> {t['type']}.{slot['name']} {in_type}")
    active = [n for n in workflow["nodes"] if n.get("mode", 0) not in INACTIVE_MODES]
    if not any(defs.get(n["type"], {}).get("output_node") for n in active):
        problems.append("no active output node (Save/Preview): nothing would run")
    return problems


def rectangles(workflow: dict) -> dict:
    """Node id → (left, top, right, bottom) on the canvas, title bar included (pos is the body's corner)."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in workflow["nodes"]}


def overlaps(workflow: dict) -> list:
    rects = rectangles(workflow)
    out = []
    for (a, ra), (b, rb) in itertools.combinations(rects.items(), 2):
        dx = min(ra[2], rb[2]) - max(ra[0], rb[0])
        dy = min(ra[3], rb[3]) - max(ra[1], rb[1])
        if dx > 0 and dy > 0:
            out.append(f"nodes {a} and {b} overlap by {dx}x{dy} px")
    return out


# --------------------------------------------------------------------------------------------- runs as shipped
def test_one_workflow_per_capability():
    assert {p.stem for p in WORKFLOWS} == CAPABILITIES


def test_example_images_are_installed_without_clobbering(fresh_install, tmp_path):
    shipped = sorted(p.name for p in (ROOT / "workflows" / "images").iterdir())
    assert fresh_install["input_files"] == [examples.input_name(n) for n in shipped]
    mine = tmp_path / examples.input_name("astronaut.png")
    mine.write_bytes(b"the user's own file")
    written = examples.install_example_images(str(tmp_path))
    assert mine.read_bytes() == b"the user's own file" and mine not in written
    assert len(written) == len(shipped) - 1
    assert examples.install_example_images(str(tmp_path)) == []  # nothing left to copy
    assert examples.install_example_images(None) == []  # without ComfyUI


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_as_shipped_on_a_fresh_install(path, defs):
    workflow = load(path)
    assert workflow.get("version") == 0.4 and workflow["nodes"] and workflow["links"]
    assert validate(workflow, defs) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_after_picking_the_tiny_set(path, defs):
    """What a user does after make-tiny: pick `tiny` in every loader; nothing else needs changing."""
    workflow = load(path)
    for node in workflow["nodes"]:
        if node["type"] == LOADER and node.get("mode", 0) not in INACTIVE_MODES:
            node["widgets_values"][0] = "tiny"
    assert validate(workflow, defs) == []


def test_workflows_ship_the_official_set_and_real_defaults():
    """Shared workflows carry the official settings (official weights, 50 steps, 32 views); tests override them."""
    for path in WORKFLOWS:
        workflow = load(path)
        linked = {(link[3], link[4]) for link in workflow["links"]}
        for node in workflow["nodes"]:
            if node["type"] == LOADER:
                assert node["widgets_values"][0] == OFFICIAL_SET, path.name
            if node["type"] == SAMPLER:
                assert node["widgets_values"][2] == 50, path.name  # seed, control, steps
                assert node["widgets_values"][1] == "fixed", path.name
            if node["type"] == "DiffStyle360TurntableCamera":
                assert node["widgets_values"][0] == 32, path.name
            if node["type"] == "PrimitiveInt" and "Steps" in node.get("title", ""):
                assert node["widgets_values"][0] == 50, path.name
        assert linked  # links exist


def test_trained_comparison_is_never_a_silent_half(defs):
    """02: the trained branch is muted until a module exists, and a note says how to get one; un-muted without
    a module, its loader fails validation instead of rendering training-free twice."""
    workflow = by_stem("02 Training-free vs trained style module")
    loaders = [n for n in workflow["nodes"] if n["type"] == LOADER]
    free = [n for n in loaders if n.get("mode", 0) == 0]
    trained = [n for n in loaders if n.get("mode", 0) in INACTIVE_MODES]
    assert len(free) == 1 and free[0]["widgets_values"][1] == loader.TRAINING_FREE
    assert len(trained) == 1
    module = trained[0]["widgets_values"][1]
    assert module != loader.TRAINING_FREE
    text = " ".join(notes(workflow))
    assert module in text and "Ctrl+M" in text and "train" in text
    # everything fed by the trained loader is muted too (no half-connected active node)
    downstream, frontier = set(), {trained[0]["id"]}
    while frontier:
        frontier = {link[3] for link in workflow["links"] if link[1] in frontier} - downstream
        downstream |= frontier
    modes = {n["id"]: n.get("mode", 0) for n in workflow["nodes"]}
    assert downstream and all(modes[i] in INACTIVE_MODES for i in downstream)
    unmuted = copy.deepcopy(workflow)
    for node in unmuted["nodes"]:
        node["mode"] = 0
    assert any("style_module" in p for p in validate(unmuted, defs))
    assert any(g["title"].startswith("Trained style module") for g in workflow["groups"])


# --------------------------------------------------------------------------------------------- V3 schema
def _schema_widgets(cls) -> list:
    """(input id, V3 input) in widgets_values order, read from the io.Schema itself (not from /object_info):
    required inputs then optional ones, each in declaration order; a seed with control_after_generate is
    followed by its control value."""
    io = host.io
    widget_kinds = (io.Int.Input, io.Float.Input, io.String.Input, io.Boolean.Input, io.Combo.Input)
    inputs = cls.GET_SCHEMA().inputs
    ordered = [i for i in inputs if not i.optional] + [i for i in inputs if i.optional]
    out = []
    for i in ordered:
        if isinstance(i, widget_kinds):
            out.append((i.id, i))
            if isinstance(i, io.Int.Input) and i.control_after_generate:
                out.append((i.id, "control"))
    return out


def _fits(spec, value) -> bool:
    io = host.io
    if spec == "control":
        return value in CONTROL_VALUES
    if isinstance(spec, io.Combo.Input):
        return isinstance(value, str)  # the value lists depend on the disk; test_workflow_runs_* checks them
    if isinstance(spec, io.Boolean.Input):
        return isinstance(value, bool)
    if isinstance(spec, io.String.Input):
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(spec, io.Int.Input) and value != int(value):
        return False
    return spec.min <= value <= spec.max


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_saved_widget_values_map_onto_the_v3_inputs_in_order(path):
    """widgets_values are positional: every saved value of our nodes lands on the V3 input it was saved for
    (same count, the right kind and range at each position) and links into widgets name V3 inputs."""
    import nodes

    by_id = nodes.nodes_by_id()
    checked = 0
    for node in load(path)["nodes"]:
        cls = by_id.get(node["type"])
        if cls is None:
            continue
        slots = _schema_widgets(cls)
        values = node.get("widgets_values", [])
        assert len(values) == len(slots), (path.name, node["type"], values, [n for n, _ in slots])
        for (name, spec), value in zip(slots, values):
            assert _fits(spec, value), (path.name, node["type"], name, value)
        ids = {i.id for i in cls.GET_SCHEMA().inputs}
        assert {slot["name"] for slot in node.get("inputs", [])} <= ids, (path.name, node["type"])
        checked += 1
    assert checked


def test_schema_widget_order_is_the_frontends():
    """The order used above agrees with what /object_info tells the frontend (input_order, control value)."""
    import nodes

    for cls in nodes.NODE_LIST:
        from_info = [(name, role) for name, _, _, role in widget_slots(cls.GET_NODE_INFO_V1())]
        from_schema = [(name, "control" if spec == "control" else "value") for name, spec in _schema_widgets(cls)]
        assert from_info == from_schema, cls.__name__


# --------------------------------------------------------------------------------------------- teaching
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_two_nodes_overlap(path):
    assert overlaps(load(path)) == []


def test_overlap_check_catches_an_overlap():
    workflow = by_stem("01 Turntable in one style")
    a, b = workflow["nodes"][1], workflow["nodes"][2]
    b["pos"] = [a["pos"][0] + 10, a["pos"][1] + 10]
    assert overlaps(workflow)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_a_note_explains_the_graph(path):
    texts = notes(load(path))
    assert texts, "no note"
    intro = texts[0]
    assert intro.startswith("## ") and OFFICIAL_SET in intro and "make-tiny" in intro and "input/" in intro


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_thumbnail(path):
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing: run tests/tools/make_thumbnails.py"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.width >= 256 and im.height >= 192
        colours = im.convert("RGB").resize((64, 48)).getcolors(64 * 48)
        assert colours is None or len(colours) > 50  # real picture content, not a flat placeholder


@pytest.mark.parametrize("stem", COMPARISONS)
def test_comparisons_share_seed_and_steps_through_primitives(stem):
    workflow = by_stem(stem)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    samplers = [n for n in workflow["nodes"] if n["type"] == SAMPLER]
    assert len(samplers) == 3
    for name in ("seed", "steps"):
        sources = set()
        for s in samplers:
            slot = next(i for i in s["inputs"] if i["name"] == name)
            assert slot.get("widget") == {"name": name} and slot["link"] is not None
            link = next(link for link in workflow["links"] if link[0] == slot["link"])
            sources.add(link[1])
        (source,) = sources
        assert nodes[source]["type"] == "PrimitiveInt"


def test_turntable_workflows_save_a_video():
    for path in WORKFLOWS:
        workflow = load(path)
        nodes = {n["id"]: n for n in workflow["nodes"]}
        if not any(n["type"] == SAMPLER for n in workflow["nodes"]):
            continue
        feeds = {}
        for link in workflow["links"]:
            feeds.setdefault(link[3], set()).add(link[1])

        def upstream(nid):
            seen, todo = set(), [nid]
            while todo:
                for src in feeds.get(todo.pop(), ()):
                    if src not in seen:
                        seen.add(src)
                        todo.append(src)
            return seen

        saves = [n for n in workflow["nodes"] if n["type"] == "SaveVideo" and n.get("mode", 0) == 0]
        assert saves, path.name
        for save in saves:
            up = {nodes[i]["type"] for i in upstream(save["id"])}
            assert {"CreateVideo", SAMPLER} <= up, path.name


def test_camera_yaws_are_shown():
    workflow = by_stem("01 Turntable in one style")
    cam = next(n for n in workflow["nodes"] if n["type"] == "DiffStyle360TurntableCamera")
    assert cam["outputs"][2]["name"] == "yaws" and cam["outputs"][2]["links"]


# --------------------------------------------------------------------------------------------- the checkers
def _mutations(workflow):
    """Broken copies, one per kind of error the validator must catch."""
    out = {}

    def first(w, kind):
        return next(n for n in w["nodes"] if n["type"] == kind)

    w = copy.deepcopy(workflow)
    first(w, SAMPLER)["widgets_values"].pop()
    out["widget count"] = w
    w = copy.deepcopy(workflow)
    first(w, SAMPLER)["widgets_values"][2] = 5000
    out["steps out of range"] = w
    w = copy.deepcopy(workflow)
    first(w, SAMPLER)["widgets_values"][5] = "plms"
    out["bad scheduler"] = w
    w = copy.deepcopy(workflow)
    first(w, "LoadImage")["widgets_values"][0] = "astronaut.png"
    out["image not in the input folder"] = w
    w = copy.deepcopy(workflow)
    first(w, LOADER)["widgets_values"][0] = "my_set"
    out["weight set not on disk"] = w
    w = copy.deepcopy(workflow)
    first(w, LOADER)["widgets_values"][1] = "diffportrait360/style_module.safetensors"
    out["style module not on disk (active node)"] = w
    w = copy.deepcopy(workflow)
    first(w, "DiffStyle360TurntableCamera")["widgets_values"][0] = 40
    out["more views than the set has"] = w
    w = copy.deepcopy(workflow)
    next(n for n in w["nodes"] if n["type"] not in VIRTUAL_NODES)["type"] = "DiffStyle360NoSuchNode"
    out["unknown node"] = w
    w = copy.deepcopy(workflow)
    cam_link = next(link for link in w["links"] if link[5] == "DS360_CAMERAS")
    model_link = next(link for link in w["links"] if link[5] == "DS360_MODEL")
    cam_link[1], cam_link[2], cam_link[5] = model_link[1], model_link[2], "DS360_MODEL"
    out["type mismatch"] = w
    w = copy.deepcopy(workflow)
    sampler = first(w, SAMPLER)
    slot = next(s for s in sampler["inputs"] if s["name"] == "content")
    w["links"] = [link for link in w["links"] if link[0] != slot["link"]]
    slot["link"] = None
    out["required input missing"] = w
    w = copy.deepcopy(workflow)
    for node in w["nodes"]:
        if defs_output_node(node["type"]):
            node["mode"] = 2
    out["every output muted"] = w
    return out


def defs_output_node(kind: str) -> bool:
    return kind in ("SaveVideo", "PreviewImage", "SaveImage", "PreviewAny")


def test_validator_catches_broken_workflows(defs):
    workflow = by_stem("01 Turntable in one style")
    assert validate(workflow, defs) == []
    for what, broken in _mutations(workflow).items():
        assert validate(broken, defs), f"validator missed: {what}"


def test_validator_checks_links_into_widgets(defs):
    workflow = by_stem("03 Style strength sweep (tau)")
    assert validate(workflow, defs) == []
    seed_link = next(link for link in workflow["links"] if link[5] == "INT")
    image_link = next(link for link in workflow["links"] if link[5] == "IMAGE")
    broken = copy.deepcopy(workflow)
    link = next(link for link in broken["links"] if link[0] == seed_link[0])
    link[1], link[2], link[5] = image_link[1], image_link[2], "IMAGE"  # an IMAGE into the seed widget
    assert any("seed" in p for p in validate(broken, defs))


def test_union_style_input_accepts_image_and_style():
    assert types_compatible("IMAGE", "IMAGE,DS360_STYLE")
    assert types_compatible("DS360_STYLE", "IMAGE,DS360_STYLE")
    assert not types_compatible("MASK", "IMAGE,DS360_STYLE")


def test_api_conversion_matches_widgets_by_name(defs):
    """tests/tools/workflow_to_api.py (used for the real-host run; checked against the frontend's own
    graphToPrompt there) maps positional widget values to input names, skipping frontend-only values,
    notes and muted nodes, and lets a primitive's link replace a widget's value."""
    from workflow_to_api import to_api

    workflow = by_stem("04 Two styles on two regions (masks)")
    prompt = to_api(workflow, defs, {SAMPLER: {"steps": 2}})
    masks = [e["inputs"] for e in prompt.values() if e["class_type"] == "LoadImageMask"]
    assert {m["channel"] for m in masks} == {"red"}
    assert {m["image"] for m in masks} <= set(defs["LoadImageMask"]["input"]["required"]["image"][0])
    (sampler,) = [e["inputs"] for e in prompt.values() if e["class_type"] == SAMPLER]
    assert sampler["steps"] == 2 and sampler["seed"] == 42 and sampler["scheduler"] == "ddim"
    assert "control_after_generate" not in sampler and isinstance(sampler["style"], list)
    chained = [e["inputs"] for e in prompt.values() if e["class_type"] == "DiffStyle360StyleMask"]
    assert sum("previous" in m for m in chained) == 1
    assert all(e["class_type"] not in VIRTUAL_NODES for e in prompt.values())

    sweep = to_api(by_stem("03 Style strength sweep (tau)"), defs)
    samplers = [e["inputs"] for e in sweep.values() if e["class_type"] == SAMPLER]
    seeds = {tuple(s["seed"]) for s in samplers}
    assert len(samplers) == 3 and len(seeds) == 1
    (source, slot), = seeds
    assert sweep[source]["class_type"] == "PrimitiveInt" and sweep[source]["inputs"]["value"] == 42

    pair = to_api(by_stem("02 Training-free vs trained style module"), defs)
    assert [e["class_type"] for e in pair.values()].count(LOADER) == 1  # the muted branch is left out
