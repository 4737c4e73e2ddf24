"""Turntable Camera picks views as users expect, and the nodes are found by what users search for.

Even spacing: one constant step between the picked renders (never a mix of 11.25 and
22.5 degrees), the front (yaw 0) among them whenever the range holds it, the yaws
used on a third output; `views` is bounded by the set (widget maximum and a
one-sentence error). The rule is the core's select_views: the command line's
--yaw-range/--views and the library pick exactly the node's views.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

import nodes as N
from diffstyle360_core.cameras import select_views
from diffstyle360_core.config import OFFICIAL_VIEWS
from diffstyle360_core.inputs import camera_set
from nodes import host, loader
from nodes.camera import TurntableCamera
from nodes.common import DiffStyle360Error
from node_runner import call, run

ROOT = Path(__file__).resolve().parents[1]
STEP = 360.0 / OFFICIAL_VIEWS  # the official renders' spacing, 11.25 degrees


@pytest.fixture(scope="module")
def model(tiny_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("camera_models")
    os.symlink(tiny_weights, root / "tiny")
    host.set_fallback_models_dir(root)
    host.unload_all_models()
    yield run("DiffStyle360LoadAppearanceModules", "tiny", loader.TRAINING_FREE, "auto")[0]
    host.unload_all_models()


def steps_between(yaws):
    """Turntable steps between consecutive yaws, in degrees (going round in increasing yaw)."""
    return [round((b - a) % 360.0, 6) for a, b in zip(yaws, yaws[1:])]


def cameras(model, views, start, end):
    cams, preview, yaws = call(TurntableCamera, model, views, start, end)
    assert preview.shape[0] == views == len(cams)
    assert yaws == ", ".join(f"{y:g}" for y in cams.yaws_deg)
    return cams.yaws_deg


def test_arc_through_the_front_is_evenly_spaced_and_holds_the_front(model):
    """The issue's case: yaw -90..90 with 12 views used to mix 11.25 and 22.5 degree steps and skip yaw 0."""
    yaws = cameras(model, 12, -90.0, 90.0)
    assert set(steps_between(yaws)) == {STEP}
    assert 0.0 in yaws
    assert all(((y + 90.0) % 360.0) <= 180.0 for y in yaws)  # inside the range
    # centred in the range: as much room left and right of the picks (within one render)
    left, right = (yaws[0] + 90.0) % 360.0, (90.0 - yaws[-1]) % 360.0
    assert abs(left - right) <= STEP


@pytest.mark.parametrize("views, step", [(4, 90.0), (8, 45.0), (16, 22.5), (32, 11.25)])
def test_full_circle_with_views_dividing_the_set(model, views, step):
    yaws = cameras(model, views, 0.0, 360.0)
    assert yaws[0] == 0.0 and set(steps_between(yaws + [360.0])) == {step}


def test_full_circle_with_other_counts_keeps_one_step_and_the_front(model):
    yaws = cameras(model, 12, 0.0, 360.0)
    assert yaws[0] == 0.0 and set(steps_between(yaws)) == {2 * STEP}
    yaws = cameras(model, 12, 90.0, 450.0)  # a full circle starting at the side
    assert 0.0 in yaws and set(steps_between(yaws)) == {2 * STEP}


def test_arc_without_the_front_uses_the_widest_even_step(model):
    assert cameras(model, 3, 90.0, 270.0) == [90.0, 180.0, 270.0]
    assert cameras(model, 1, 90.0, 270.0) == [180.0]  # one view: the middle of the arc


def test_small_arc_through_the_front(model):
    yaws = cameras(model, 2, 315.0, 45.0)
    assert 0.0 in yaws and len(set(steps_between(yaws))) == 1
    assert cameras(model, 1, 315.0, 45.0) == [0.0]


def cli_yaws(model, views, yaw_range):
    """The views ``stylize``/``batch`` render for --views / --yaw-range, through the command line's own parser."""
    from diffstyle360_core.cli.main import _select_cameras, build_parser

    argv = ["stylize", "--weights", "w", "--content", "c.png", "--out", "o", "--views", str(views)]
    argv += ["--yaw-range", *map(str, yaw_range)] if yaw_range is not None else []
    args = build_parser(plugins=False).parse_args(argv)
    full = model.cameras()
    return _select_cameras(args, full, full.size)[0].yaws_deg


@pytest.mark.parametrize("views, start, end, holds_front", [
    (12, -90.0, 90.0, True),    # the case
    (8, 0.0, 360.0, True),
    (12, 0.0, 360.0, True),     # a count that does not divide the set
    (3, 90.0, 270.0, False),    # a range without the front
    (5, 100.0, 200.0, False),   # without the front, not starting on a render
    (7, 300.0, 60.0, True),     # wrapping through 360
])
def test_command_line_and_library_pick_the_nodes_views(model, views, start, end, holds_front):
    node = cameras(model, views, start, end)
    assert len(set(steps_between(node))) <= 1 and (0.0 in node) == holds_front
    assert cli_yaws(model, views, (start, end)) == node
    assert select_views(model.cameras(), views=views, yaw_range=(start, end)).yaws_deg == node
    if (end - start) % 360.0 == 0.0:  # the full circle: --views alone and stylize(views=N) are the same turntable
        full = model.cameras()
        assert cli_yaws(model, views, None) == node
        assert camera_set(None, full, views, full.size).yaws_deg == node


def test_views_are_bounded_by_the_set(model):
    spec = TurntableCamera.GET_NODE_INFO_V1()["input"]["required"]["views"][1]
    assert spec["max"] == OFFICIAL_VIEWS and spec["default"] == OFFICIAL_VIEWS
    with pytest.raises(DiffStyle360Error) as err:
        call(TurntableCamera, model, 20, 0.0, 90.0)  # 9 renders in a quarter turn
    message = str(err.value)
    assert "20 views" in message and "9 camera renders" in message and "views <= 9" in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_new_yaws_output_comes_after_the_old_ones():
    """Saved workflows link outputs by position: cameras and conditions keep slots 0 and 1."""
    info = TurntableCamera.GET_NODE_INFO_V1()
    assert info["output_name"] == ["cameras", "conditions", "yaws"]
    assert info["output"][2] == "STRING" and len(info["output_tooltips"]) == 3


# --------------------------------------------------------------------------------------------- search and seeds
#: ComfyUI 0.8's frontend (1.35) searches the node id and display name (Fuse.js, keys name/display_name,
#: threshold 0.3, default location/distance): a word counts only when it starts within the first 30 characters.
SEARCH_REACH = 30


@pytest.mark.parametrize("query, node", [
    ("style transfer", "DiffStyle360StyleFusionSampler"),
    ("sampler", "DiffStyle360StyleFusionSampler"),
    ("model loader", "DiffStyle360LoadAppearanceModules"),
    ("load model", "DiffStyle360LoadAppearanceModules"),
    ("turntable", "DiffStyle360TurntableCamera"),
    ("360", "DiffStyle360TurntableCamera"),
])
def test_search_words_lead_the_display_names(query, node):
    name = N.nodes_by_id()[node].GET_SCHEMA().display_name.lower()
    for word in query.split():
        assert 0 <= name.find(word) < SEARCH_REACH or 0 <= node.lower().find(word) < SEARCH_REACH, (word, name)


def test_every_node_has_search_aliases():
    """Newer ComfyUI sends a schema's search_aliases to the search box; the asked-for words are among them."""
    aliases = {k: [a.lower() for a in getattr(cls, "SEARCH_ALIASES", [])] for k, cls in N.nodes_by_id().items()}
    assert all(aliases.values()), [k for k, v in aliases.items() if not v]
    every = {a for v in aliases.values() for a in v}
    assert {"style transfer", "model loader", "turntable", "360"} <= every


def test_back_view_generate_starts_with_a_fixed_seed():
    """The frontend gives every seed "randomize"; the pack's web extension makes new Back-View Generate
    nodes "fixed" (a new seed every Queue would defeat the cache of everything downstream)."""
    web = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["web"]
    script = (ROOT / web / "js" / "fixed_seeds.js").read_text()
    assert '"DiffStyle360BackViewGenerate"' in script and '"fixed"' in script and "nodeCreated" in script
    seed = N.nodes_by_id()["DiffStyle360BackViewGenerate"].GET_NODE_INFO_V1()["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] is True  # keep the widget (saved workflows store its value)
