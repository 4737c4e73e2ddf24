"""Hostile and mistaken inputs (issue 14.5): each value is checked where it enters, with one sentence.

Weights and config.json, devices, and the library's inputs (images, masks,
cameras, τ, callbacks). Every case asserts the error class, that the message
names what was wrong, and, where it matters, that nothing was computed or read
before the refusal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffstyle360_core import weights as weights_module
from diffstyle360_core.cameras import CameraSet, load_condition_set
from diffstyle360_core.config import BACK_VIEW, CONFIG_NAME, MAIN
from diffstyle360_core.devices import resolve_device
from diffstyle360_core.images import ImageInputError, load_mask, to_model_tensor
from diffstyle360_core.inputs import NonFiniteOutputError
from diffstyle360_core.options import InputError, InputTypeError
from diffstyle360_core.pipeline import DiffStyle360Pipeline, Style
from diffstyle360_core.tiny import TINY_FILES, write_tiny_condition_set
from diffstyle360_core.weights import (
    CheckpointFileError,
    WeightDtypeError,
    convert_checkpoint,
    load_model,
    load_official_state_dict,
    load_style_module,
)
from tiny_models import random_model, tiny_pipeline

FAST = dict(steps=1, cfg=3.0, eta=0.5)


def _one_sentence(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture
def tiny(tiny_weights):
    root = Path(tiny_weights)
    return {MAIN: root / MAIN, BACK_VIEW: root / BACK_VIEW, "style": root / "style_module-tiny.safetensors",
            "original_back_view": root / "original" / TINY_FILES[BACK_VIEW]}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("cams") / "sphere32", views=8)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    return tuple(torch.rand(1, 64, 64, 3, generator=g) for _ in range(3))  # content, style, back


@pytest.fixture
def no_compute(pipe, monkeypatch):
    """Any model call fails the test: a refusal must come before the first compute."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model ran before the input was refused")

    for model in (pipe.main, pipe.back_view_model):
        monkeypatch.setattr(model, "encode", forbidden)
        monkeypatch.setattr(model, "decode", forbidden)
    return pipe


@pytest.fixture
def no_weight_read(monkeypatch):
    def forbidden(path, *args, **kwargs):
        raise AssertionError(f"{path} was read before config.json was refused")

    monkeypatch.setattr(weights_module, "_read_safetensors", forbidden)


# --------------------------------------------------------------------------- #
# weights: dtypes checked like shapes
# --------------------------------------------------------------------------- #
def _rewrite(path: Path, change) -> str:
    """Rewrite a safetensors file with ``change(state)`` applied; returns the key changed."""
    from safetensors.torch import load_file, save_file

    sd = {k: v.clone() for k, v in load_file(str(path)).items()}
    key = change(sd)
    save_file(sd, str(path))
    return key


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int8])
def test_a_non_float_weight_is_refused_naming_key_and_file(tiny, tmp_path, dtype):
    folder = tmp_path / MAIN
    shutil.copytree(tiny[MAIN], folder)

    def to_int(sd):
        key = sorted(sd)[2]
        sd[key] = sd[key].to(dtype)
        return key

    key = _rewrite(folder / "vae.safetensors", to_int)
    with pytest.raises(WeightDtypeError) as info:
        load_model(folder)
    text = _one_sentence(info.value)
    assert repr(key) in text and "vae.safetensors" in text and str(dtype).removeprefix("torch.") in text


def test_a_non_float_style_module_is_refused(tiny, tmp_path):
    style = tmp_path / "style.safetensors"
    shutil.copy(tiny["style"], style)
    key = _rewrite(style, lambda sd: next(k for k in sd if sd.update({k: sd[k].long()}) is None))
    model = load_model(tiny[MAIN])
    with pytest.raises(WeightDtypeError) as info:
        load_style_module(model, style)
    assert repr(key) in str(info.value) and "style.safetensors" in str(info.value)


def test_a_non_float_official_checkpoint_is_refused_at_conversion(tiny, tmp_path):
    sd = load_official_state_dict(tiny["original_back_view"])
    key = "first_stage_model.decoder.conv_in.weight"
    damaged = tmp_path / "damaged.th"
    torch.save(dict(sd, **{key: sd[key].to(torch.int64)}), damaged)
    shutil.copy(tiny["original_back_view"].with_suffix(".config.json"), tmp_path / "damaged.config.json")
    with pytest.raises(WeightDtypeError) as info:
        convert_checkpoint(damaged, tmp_path / "out")
    assert repr(key) in str(info.value) and "damaged.th" in str(info.value)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- #
# config.json values, before any weight is read
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("edit, field", [
    (lambda c: c.update(image_size="64"), "image_size"),
    (lambda c: c.update(image_size=48), "image_size"),
    (lambda c: c.update(image_size=True), "image_size"),
    (lambda c: c["unet"].update(block_out_channels=[32, "64", 64, 64]), "unet.block_out_channels[1]"),
    (lambda c: c["unet"].update(norm_num_groups=7), "unet.norm_num_groups"),
    (lambda c: c["unet"].update(cross_attention_dim=-32), "unet.cross_attention_dim"),
    (lambda c: c.update(vae=[1, 2]), "vae"),
    (lambda c: c["vae"].update(scaling_factor="0.18"), "vae.scaling_factor"),
    (lambda c: c["temporal"].update(window=99), "temporal.window"),
    (lambda c: c["temporal"].update(num_heads=0), "temporal.num_heads"),
    (lambda c: c["schedule"].update(beta_end=2.0), "schedule.beta_end"),
    (lambda c: c["schedule"].update(beta_start=0.5, beta_end=0.1), "schedule.beta_start"),
    (lambda c: c["schedule"].update(num_train_timesteps=0), "schedule.num_train_timesteps"),
    (lambda c: c["schedule"].update(prediction="noise"), "schedule.prediction"),
])
def test_config_values_of_the_wrong_type_or_range_are_refused_naming_file_and_field(
        tiny, tmp_path, no_weight_read, edit, field):
    folder = tmp_path / MAIN
    shutil.copytree(tiny[MAIN], folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        load_model(folder)
    text = _one_sentence(info.value)
    assert str(folder / CONFIG_NAME) in text and repr(field) in text


def test_a_config_diffusers_cannot_build_is_named_as_the_configs_fault(tiny, tmp_path, no_weight_read):
    folder = tmp_path / MAIN
    shutil.copytree(tiny[MAIN], folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["unet"]["down_block_types"] = ["NoSuchBlock2D"] * 4
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot be built") as info:
        load_model(folder)
    assert str(folder / CONFIG_NAME) in str(info.value)


# --------------------------------------------------------------------------- #
# style-module metadata: reported as the file's, never as a --pairing nobody passed
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("training, said", [
    ('{"pairing": "bogus", "mask_mode": "paper"}', "pairing='bogus'"),
    ('{"pairing": "paper", "mask_mode": 3}', "mask_mode=3"),
    ("not json", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
])
def test_bad_style_module_metadata_is_reported_as_the_files(tiny, tmp_path, training, said):
    from safetensors import safe_open
    from safetensors.torch import save_file

    style = tmp_path / "style.safetensors"
    with safe_open(str(tiny["style"]), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata() or {})
    save_file(tensors, str(style), metadata={**meta, "diffstyle360_training": training})
    with pytest.raises(CheckpointFileError) as info:
        load_style_module(load_model(tiny[MAIN]), style)
    text = _one_sentence(info.value)
    assert "style.safetensors" in text and "metadata" in text and said in text and "--pairing" not in text


# --------------------------------------------------------------------------- #
# devices
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("device", [
    "xpu", "mps", "meta", "hpu", "garbage", "cuda:-1",
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")),
])
def test_a_device_this_torch_cannot_use_is_refused_in_one_sentence(tiny, device, no_weight_read):
    for usable in ("xpu", "mps"):
        if device == usable and getattr(getattr(torch, usable, None), "is_available", lambda: False)():
            pytest.skip(f"{usable} is usable here")
    with pytest.raises(InputError) as info:
        resolve_device(device)
    text = _one_sentence(info.value)
    assert repr(device) in text and "cpu" in text
    with pytest.raises(InputError, match="device"):
        load_model(tiny[MAIN], device=device)  # before config.json's weights are touched


# --------------------------------------------------------------------------- #
# library inputs
# --------------------------------------------------------------------------- #
def test_nan_views_name_weights_or_config(images, tmp_path):
    content, _, back = images
    model = random_model(MAIN, 0)
    with torch.no_grad():
        model.vae.decoder.conv_out.bias.fill_(float("nan"))  # a damaged decoder
    folder = tmp_path / "sphere32"
    write_tiny_condition_set(folder, size=64, n=4)
    broken = DiffStyle360Pipeline(model, None, load_condition_set(folder, 64))
    with pytest.raises(NonFiniteOutputError) as info:
        broken.stylize(content, None, content_back=back, views=1, **FAST)
    text = _one_sentence(info.value)
    assert "NaN" in text and "weights" in text and "config.json" in text


def test_int64_0_1_image_and_mask_agree():
    """One integer rule: an int64 0/1 array is read as 0/1 labels both as an image and as a mask."""
    labels = np.zeros((40, 40), np.int64)
    labels[10:30, 5:25] = 1
    image = to_model_tensor(np.repeat(labels[..., None], 3, axis=-1), 40)
    mask = load_mask(labels, 40)
    assert torch.equal((image[0, 0] + 1) / 2, mask[0, 0])
    assert mask.max() == 1.0 and (image.max() == 1.0)
    as_bool = to_model_tensor(np.repeat(labels[..., None], 3, axis=-1).astype(bool), 40)
    as_uint8 = to_model_tensor(np.repeat(labels[..., None], 3, axis=-1).astype(np.uint8) * 255, 40)
    assert torch.equal(as_bool, image) and torch.equal(as_uint8, image)
    grey = labels * 200  # largest value above 1: 0..255 grey levels, as before
    assert abs(float(to_model_tensor(grey[..., None], 40).max()) - (200 / 255 * 2 - 1)) < 1e-6


def test_tau_keys_that_match_no_layer_are_refused(no_compute, images):
    content, style, back = images
    with pytest.raises(InputError) as info:
        no_compute.stylize(content, style, content_back=back, views=1, tau={"down_block.0": 1.2}, **FAST)
    assert "'down_block.0'" in _one_sentence(info.value) and "matches no attention layer" in str(info.value)


def test_views_with_cameras_is_refused(no_compute, images):
    content, _, back = images
    with pytest.raises(InputError, match="either views .* or cameras, not both"):
        no_compute.stylize(content, None, content_back=back, views=2, cameras=no_compute.cameras, **FAST)


@pytest.mark.parametrize("progress", ["bar", 3, [print]])
def test_a_progress_that_is_not_callable_is_refused_before_any_compute(no_compute, images, progress):
    content, _, back = images
    with pytest.raises(InputTypeError, match="progress must be a function"):
        no_compute.stylize(content, None, content_back=back, views=1, progress=progress, **FAST)
    with pytest.raises(InputTypeError, match="progress must be a function"):
        no_compute.back_view(content, progress=progress, **FAST)
    with pytest.raises(InputTypeError, match="progress must be a function"):
        no_compute.decode(torch.zeros(1, 4, 8, 8), progress=progress)


def test_meta_device_tensors_are_refused(no_compute, images):
    content, _, back = images
    meta_image = torch.empty(1, 64, 64, 3, device="meta")
    with pytest.raises(ImageInputError, match="meta device"):
        no_compute.stylize(meta_image, None, content_back=back, views=1, **FAST)
    with pytest.raises(ImageInputError, match="meta device"):
        no_compute.stylize(content, Style([content], mask=torch.empty(1, 64, 64, device="meta")),
                           content_back=back, views=1, **FAST)
    cams = CameraSet(torch.empty(2, 3, 64, 64, device="meta"), [0.0, 180.0])
    with pytest.raises(InputError, match="meta device"):
        no_compute.stylize(content, None, content_back=back, cameras=cams, **FAST)
    with pytest.raises(InputError, match="meta device"):
        no_compute.decode(torch.empty(1, 4, 8, 8, device="meta"))


def test_camera_images_outside_their_range_are_refused(no_compute, images):
    content, _, back = images
    g = torch.Generator().manual_seed(0)
    cams = CameraSet(torch.rand(2, 3, 64, 64, generator=g) * 255, [0.0, 180.0])  # 0..255 data, not [-1, 1]
    with pytest.raises(InputError, match=r"must be in \[-1, 1\]"):
        no_compute.stylize(content, None, content_back=back, cameras=cams, **FAST)
    with pytest.raises(InputError, match=r"must be in \[-1, 1\]"):
        no_compute.back_view(content, camera=torch.full((1, 3, 64, 64), 2.0), **FAST)
    from diffstyle360_core.cameras import user_conditions

    with pytest.raises(ImageInputError, match="0..1"):  # a ComfyUI IMAGE batch of 0..255 floats
        user_conditions(torch.rand(2, 64, 64, 3, generator=g) * 255, 64)


def test_a_list_or_empty_style_gets_a_clear_message(no_compute, images):
    content, style, back = images
    with pytest.raises(InputError) as info:
        no_compute.stylize(content, [], content_back=back, views=1, **FAST)
    assert "empty" in _one_sentence(info.value) and "unsupported image type" not in str(info.value)
    with pytest.raises(InputTypeError) as info:
        no_compute.stylize(content, [style, style], content_back=back, views=1, **FAST)
    text = _one_sentence(info.value)
    assert "Style(images=" in text and "unsupported image type" not in text


def test_an_hxwx1_mask_is_one_mask_not_h_masks():
    narrow = np.ones((16, 64, 1), np.float32)  # too small: refused as ONE 64x16 mask, not a batch of 16
    with pytest.raises(ImageInputError) as info:
        load_mask(narrow, 8)
    assert "batch" not in str(info.value) and "at least 32" in str(info.value)
    m = np.zeros((64, 48), np.float32)
    m[10:40, 5:30] = 1.0
    assert torch.equal(load_mask(m[..., None], 16, crop="none"), load_mask(m, 16, crop="none"))
    assert torch.equal(load_mask(torch.from_numpy(m)[..., None], 16), load_mask(m, 16))


def test_a_weight_set_with_a_wrong_config_field_stays_listed(tiny_weights, tmp_path):
    """The node list shows a damaged set (rather than hiding it), so loading it can say which field is wrong."""
    from diffstyle360_core.catalog import list_weight_sets

    root = tmp_path / "models"
    shutil.copytree(Path(tiny_weights) / MAIN, root / "damaged" / MAIN)
    config = json.loads((root / "damaged" / MAIN / CONFIG_NAME).read_text())
    config["schedule"]["beta_end"] = "high"
    (root / "damaged" / MAIN / CONFIG_NAME).write_text(json.dumps(config))
    assert MAIN in list_weight_sets([root])["damaged"].kinds
