"""A make-tiny folder dropped under models/diffstyle360/ is found as a selectable weight set."""

import shutil

from diffstyle360_core.catalog import describe, list_weight_sets
from diffstyle360_core.tiny import make_tiny


def test_make_tiny_folder_is_a_complete_selectable_weight_set(tmp_path):
    models = tmp_path / "ComfyUI" / "models" / "diffstyle360"
    make_tiny(models / "tiny-demo")
    (models / "not-a-model").mkdir()
    sets = list_weight_sets([models])
    assert list(sets) == ["tiny-demo"]
    ws = sets["tiny-demo"]
    assert ws.complete and ws.kinds == ["main", "back_view"]
    assert "style_module-tiny.safetensors" in ws.style_modules
    # a half-copied folder is listed but not complete
    shutil.rmtree(models / "tiny-demo" / "cam_condition")
    assert not describe(models / "tiny-demo").complete
    assert describe(tmp_path) is None
    # a foreign config.json (e.g. a diffusers UNet folder) is not taken for a model
    foreign = tmp_path / "foreign" / "main"
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    assert describe(tmp_path / "foreign") is None
