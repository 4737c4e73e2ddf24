"""A make-tiny folder dropped under models/diffstyle360/ is found as a selectable weight set."""

import shutil

from diffstyle360_core.catalog import describe, list_weight_sets


def _weight_set(tiny_weights, folder):
    """A weight-set folder made of the session's tiny set: models linked (read-only), cameras copied."""
    folder.mkdir(parents=True)
    for name in ("main", "back_view", "style_module-tiny.safetensors"):
        (folder / name).symlink_to(tiny_weights / name)
    shutil.copytree(tiny_weights / "cam_condition", folder / "cam_condition")
    return folder


def test_make_tiny_folder_is_a_complete_selectable_weight_set(tiny_weights, tmp_path):
    models = tmp_path / "ComfyUI" / "models" / "diffstyle360"
    demo = _weight_set(tiny_weights, models / "tiny-demo")
    (models / "not-a-model").mkdir()
    sets = list_weight_sets([models, tmp_path / "missing-root"])
    assert list(sets) == ["tiny-demo"]
    ws = sets["tiny-demo"]
    assert ws.complete and ws.kinds == ["main", "back_view"] and ws.path == demo and ws.has_cameras
    assert ws.style_modules == ["style_module-tiny.safetensors"]

    # an empty camera folder is no camera set (the pipeline would not find one either)
    for png in (demo / "cam_condition" / "sphere32").glob("*.png"):
        png.unlink()
    assert not describe(demo).has_cameras and not describe(demo).complete
    # the other searched locations count, in the pipeline's order
    shutil.copytree(tiny_weights / "cam_condition" / "sphere32", demo / "sphere32")
    assert describe(demo).complete
    # a half-copied folder (no cameras, one model) is listed but not complete
    shutil.rmtree(demo / "sphere32")
    (demo / "back_view").unlink()
    half = describe(demo)
    assert half.kinds == ["main"] and not half.complete
    assert describe(tmp_path) is None

    # a foreign config.json (e.g. a diffusers UNet folder) is not taken for a model
    foreign = tmp_path / "foreign" / "main"
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    assert describe(tmp_path / "foreign") is None


def test_first_root_wins_a_name_clash(tiny_weights, tmp_path):
    first = _weight_set(tiny_weights, tmp_path / "a" / "demo")
    _weight_set(tiny_weights, tmp_path / "b" / "demo")
    _weight_set(tiny_weights, tmp_path / "b" / "other")
    sets = list_weight_sets([tmp_path / "a", tmp_path / "b"])
    assert sorted(sets) == ["demo", "other"] and sets["demo"].path == first
