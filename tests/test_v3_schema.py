"""The V3 declaration: the fallback schema (nodes/v3_fallback.py) behaves like ComfyUI's ``comfy_api.latest``.

The first half runs everywhere, against whichever ``io`` nodes/host.py picked (the
fallback in CI). The second half needs a ComfyUI source tree on the path and is
skipped without one; it checks that ComfyUI's real API and the fallback say the
same for our seven nodes (``GET /object_info`` content, execution through the
executor's locked class clone) and that ComfyUI's own loader registers the pack
through ``comfy_entrypoint``::

    cd /path/to/ComfyUI && PYTHONPATH=$PWD python -m pytest /path/to/pack/tests/test_v3_schema.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

COMFY_IMPORTABLE = importlib.util.find_spec("comfy") is not None and importlib.util.find_spec("comfy_api") is not None
if COMFY_IMPORTABLE and "nodes.host" not in sys.modules and not torch.cuda.is_available():
    from comfy.cli_args import args as _comfy_args

    _comfy_args.cpu = True  # what `main.py --cpu` does: comfy.model_management probes the device at import

import nodes  # noqa: E402
from nodes import host, loader, v3_fallback  # noqa: E402
from nodes.styles import KeyScaleChoice, StyleStack  # noqa: E402
from node_runner import call, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IDS = ["DiffStyle360LoadAppearanceModules", "DiffStyle360BackViewGenerate", "DiffStyle360TurntableCamera",
       "DiffStyle360KeyScale", "DiffStyle360StyleMask", "DiffStyle360StyleBlend", "DiffStyle360StyleFusionSampler"]
needs_comfyui = pytest.mark.skipif(not COMFY_IMPORTABLE, reason="ComfyUI is not importable (CI has none); run from a "
                                   "ComfyUI source tree with it on PYTHONPATH")


def object_info() -> dict:
    """Our nodes as ``GET /object_info`` describes them, as JSON (tuples become lists, as on the wire)."""
    return json.loads(json.dumps({cls.GET_SCHEMA().node_id: cls.GET_NODE_INFO_V1() for cls in nodes.NODE_LIST}))


@pytest.fixture
def one_weight_set(tiny_weights, tmp_path, monkeypatch):
    """A models folder holding the tiny set only, for the fallback and for ComfyUI's folder registry alike."""
    os.symlink(tiny_weights, tmp_path / "tiny")
    monkeypatch.setattr(host, "model_roots", lambda: [str(tmp_path)])
    return tmp_path


# --------------------------------------------------------------------------------------------- everywhere
def test_the_extension_lists_the_seven_nodes_once():
    extension = asyncio.run(nodes.comfy_entrypoint())
    assert isinstance(extension, host.ComfyExtension)
    listed = asyncio.run(extension.get_node_list())
    assert [cls.GET_SCHEMA().node_id for cls in listed] == IDS
    assert all(issubclass(cls, host.io.ComfyNode) for cls in listed)
    assert not hasattr(nodes, "NODE_CLASS_MAPPINGS")  # a V1 mapping would make ComfyUI skip comfy_entrypoint


def test_nodes_keep_no_state_on_the_class(one_weight_set):
    """The executor runs every call on a locked clone: a node that set a class attribute would fail there."""
    for cls in nodes.NODE_LIST:
        cls.GET_SCHEMA()  # the host's first look caches the V1 view on the class; runs must add nothing
    before = {cls: set(vars(cls)) for cls in nodes.NODE_LIST}
    (fusion,) = run("DiffStyle360KeyScale", 1.1, "aligned", "confined", 0.0, 0.0, 0.0, 0.0)
    assert fusion == KeyScaleChoice(1.1, "aligned", "confined")
    (handle,) = run("DiffStyle360LoadAppearanceModules", "tiny", loader.TRAINING_FREE, "auto")
    assert handle.weight_set == "tiny"
    assert {cls: set(vars(cls)) for cls in nodes.NODE_LIST} == before

    class Sticky(host.io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return host.io.Schema(node_id="Sticky", inputs=[], outputs=[host.io.Int.Output("n")])

        @classmethod
        def execute(cls):
            cls.count = 1  # state on the class: refused
            return host.io.NodeOutput(1)

    with pytest.raises(AttributeError, match="count"):
        call(Sticky)


def test_fallback_schema_rules():
    io = v3_fallback
    twice = io.Schema(node_id="X", inputs=[io.Int.Input("a"), io.Float.Input("a")])
    with pytest.raises(ValueError, match="Input ids must be unique"):
        twice.validate()
    unnamed = io.Schema(node_id="X", outputs=[io.Image.Output()])
    unnamed.finalize()
    assert unnamed.outputs[0].id == "_0_IMAGE_"

    class NoExecute(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="NoExecute")

    with pytest.raises(Exception, match="No execute function"):
        NoExecute.GET_SCHEMA()

    class Plain(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="Plain", outputs=[io.Int.Output("n")])

        @classmethod
        def execute(cls, n=1):
            return (n,)  # a plain tuple is normalized like the host does

    assert Plain.FUNCTION == "EXECUTE_NORMALIZED" and Plain.EXECUTE_NORMALIZED(n=3).result == (3,)
    clone = Plain.PREPARE_CLASS_CLONE({"hidden_inputs": {"UNIQUE_ID": "7"}})
    assert issubclass(clone, Plain) and clone.hidden.unique_id == "7" and clone.hidden.prompt is None
    assert io.NodeOutput.from_dict({"result": (1, 2)}).args == (1, 2) and io.NodeOutput().result is None


def test_union_and_custom_socket_types():
    info = object_info()
    assert info["DiffStyle360StyleFusionSampler"]["input"]["optional"]["style"][0] == "IMAGE,DS360_STYLE"
    assert info["DiffStyle360StyleMask"]["input"]["required"]["style"][0] == "IMAGE,DS360_STYLE"
    assert info["DiffStyle360TurntableCamera"]["output"] == ["DS360_CAMERAS", "IMAGE", "STRING"]
    assert info["DiffStyle360LoadAppearanceModules"]["output"] == ["DS360_MODEL"]


def test_node_outputs_reach_the_next_node_by_position(one_weight_set):
    """Loader → camera → (no model run) as the executor chains them: outputs taken by index."""
    (handle,) = run("DiffStyle360LoadAppearanceModules", weight_set="tiny", style_module=loader.TRAINING_FREE,
                    dtype="auto")
    cams, preview, yaws = run("DiffStyle360TurntableCamera", model=handle, views=4, yaw_start=0.0, yaw_end=360.0)
    assert yaws == "0, 90, 180, 270" and preview.shape[0] == 4 == len(cams)
    image = torch.rand(1, 64, 64, 3)
    (style,) = run("DiffStyle360StyleBlend", style_1=image, style_2=image, alpha=0.5)
    assert isinstance(style, StyleStack)


# --------------------------------------------------------------------------------------------- real ComfyUI
@needs_comfyui
def test_host_picks_comfyuis_own_schema():
    from comfy_api.latest import ComfyExtension, io

    assert host.io is io and host.ComfyExtension is ComfyExtension and not host.V3_FALLBACK
    assert all(issubclass(cls, io.ComfyNode) for cls in nodes.NODE_LIST)


@needs_comfyui
def test_fallback_and_comfyui_describe_our_nodes_identically(one_weight_set, tmp_path):
    """/object_info under ComfyUI's API vs the fallback's (a Python without ComfyUI on its path), same disk."""
    real = object_info()
    code = ("import json, sys; sys.path.insert(0, %r)\n"
            "import nodes\n"
            "assert nodes.host.V3_FALLBACK, 'ComfyUI was importable'\n"
            "print(json.dumps({c.GET_SCHEMA().node_id: c.GET_NODE_INFO_V1() for c in nodes.NODE_LIST}))\n" % str(ROOT))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DIFFSTYLE360_MODELS"] = str(one_weight_set)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fallback = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(real) == sorted(fallback) == sorted(IDS)
    for node_id in IDS:
        for key in real[node_id]:
            assert real[node_id][key] == fallback[node_id][key], (node_id, key)
        assert real[node_id] == fallback[node_id], node_id


@needs_comfyui
def test_fallback_inputs_serialize_like_comfyuis():
    """Each input/output kind we declare, with every option we pass, gives ComfyUI's dict and type string."""
    from comfy_api.latest import io as real

    fb = v3_fallback
    cases = [
        lambda io: io.Int.Input("seed", default=0, min=0, max=2**64 - 1, step=1, control_after_generate=True,
                                tooltip="t"),
        lambda io: io.Float.Input("tau", default=1.05, min=0.5, max=2.0, step=0.01, round=0.001, tooltip="t",
                                  optional=True),
        lambda io: io.String.Input("weights", default="", optional=True, tooltip="t"),
        lambda io: io.Boolean.Input("keep", default=False, optional=True, tooltip="t"),
        lambda io: io.Combo.Input("dtype", options=["auto", "fp32"], default="auto", tooltip="t"),
        lambda io: io.Combo.Input("weight_set", options=["a"], tooltip="t"),
        lambda io: io.Image.Input("image", tooltip="t", optional=True),
        lambda io: io.Mask.Input("mask", tooltip="t"),
        lambda io: io.Custom("DS360_MODEL").Input("model", tooltip="t"),
        lambda io: io.MultiType.Input("style", [io.Image, io.Custom("DS360_STYLE")], tooltip="t", optional=True),
    ]
    for make in cases:
        a, b = make(real), make(fb)
        assert (a.get_io_type(), a.as_dict()) == (b.get_io_type(), b.as_dict()), a.id
    for io in (real, fb):  # hidden inputs reach execute() the same way
        class Probe(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id="Probe", outputs=[io.String.Output("id")])

            @classmethod
            def execute(cls):
                return io.NodeOutput(cls.hidden.unique_id)

        clone = Probe.PREPARE_CLASS_CLONE({"hidden_inputs": {"UNIQUE_ID": "12"}})
        assert clone.EXECUTE_NORMALIZED().result == ("12",) and clone.hidden.prompt is None
    outputs = [lambda io: io.Image.Output("views", tooltip="t"), lambda io: io.String.Output("yaws"),
               lambda io: io.Custom("DS360_CAMERAS").Output("cameras", tooltip="t")]
    for make in outputs:
        a, b = make(real), make(fb)
        assert (a.get_io_type(), a.as_dict(), a.id) == (b.get_io_type(), b.as_dict(), b.id)


@needs_comfyui
def test_comfyuis_loader_registers_the_pack_through_comfy_entrypoint(tmp_path):
    """ComfyUI's own load_custom_node on this folder (in a fresh process: its ``nodes`` module is not ours)."""
    comfy_root = Path(importlib.util.find_spec("comfy").submodule_search_locations[0]).parent
    code = (
        "import asyncio, sys\n"
        "from comfy.cli_args import args\n"
        "args.cpu = True\n"
        "import nodes\n"
        f"ok = asyncio.run(nodes.load_custom_node({str(ROOT)!r}))\n"
        "ours = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith('DiffStyle360'))\n"
        "print(ok, ours, [nodes.NODE_DISPLAY_NAME_MAPPINGS[k] for k in ours])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=comfy_root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(comfy_root)})
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("True") and all(i in line for i in IDS), line
    assert "DiffStyle360 Style Transfer (Style Fusion Sampler)" in line, line
