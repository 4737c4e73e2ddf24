"""Tests for diffstyle360_core.images and diffstyle360_core.cameras (CPU, tiny tensors)."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffstyle360_core.cameras import (CameraSet, TooManyViewsError, back_view_index, even_positions,
                                       find_condition_folder, is_front, load_condition_set, select_views,
                                       user_conditions)
from diffstyle360_core.cli.saving import save_views
from diffstyle360_core.images import (ImageInputError, load_image, load_mask,
                                      tensor_to_pil, to_comfy_image, to_model_tensor)

try:
    from diffstyle360_core.cameras import write_tiny_condition_set
except ImportError:  # the cartoon-head renderer moved to tiny.py
    from diffstyle360_core.tiny import write_tiny_condition_set


def _gradient(h=48, w=64):
    """uint8 HxWx3 with distinct content per column/row/channel."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], -1).astype(np.uint8)


# --------------------------------------------------------------------------- #
# load_image
# --------------------------------------------------------------------------- #
def test_load_image_missing(tmp_path):
    with pytest.raises(ImageInputError, match=r"front image: file not found.*nope\.png"):
        load_image(tmp_path / "nope.png", name="front image")


def test_load_image_unreadable_and_folder(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageInputError, match=r"could not read .*bad\.png.*Re-save it as PNG"):
        load_image(bad, name="style")
    with pytest.raises(ImageInputError, match="is a folder"):
        load_image(tmp_path, name="style")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK"])
def test_load_image_modes_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(_gradient())
    if mode == "I;16":
        im = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
        p = tmp_path / "x.png"
    elif mode == "CMYK":
        im = rgb.convert("CMYK")
        p = tmp_path / "x.jpg"
    else:
        im = rgb.convert(mode)
        p = tmp_path / "x.png"
    im.save(p)
    out = load_image(p, name="img")
    assert out.mode == "RGB" and out.size == (64, 48)


def test_decompression_bomb_says_too_large_not_resave(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    Image.new("RGB", (2000, 1000)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)  # 2 MP > 2x the limit: Pillow refuses
    with pytest.raises(ImageInputError) as err:
        load_image(p, name="content")
    msg = str(err.value)
    assert "huge.png" in msg and "too large (2 megapixels" in msg and "Downscale" in msg
    assert "Re-save" not in msg


def test_rgba_alpha_dropped_by_default_or_composited(tmp_path):
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., 0] = 200  # red, fully transparent ...
    a[:20, :, 3] = 255  # ... except the top half, opaque
    p = tmp_path / "t.png"
    Image.fromarray(a, "RGBA").save(p)
    out = np.asarray(load_image(p))  # official: .convert("RGB"), alpha dropped
    assert out.shape == (40, 40, 3) and (out[..., 0] == 200).all() and (out[..., 1] == 0).all()
    white = np.asarray(load_image(p, alpha="white"))
    assert (white[:20] == [200, 0, 0]).all() and (white[20:] == 255).all()
    black = np.asarray(load_image(p, alpha="black"))
    assert (black[:20] == [200, 0, 0]).all() and (black[20:] == 0).all()
    # the same through to_model_tensor, for a file and for an RGBA array (uint8 and float)
    for x in (p, a, a.astype(np.float32) / 255):
        t = to_model_tensor(x, 40, alpha="white")
        assert torch.allclose(t[0, :, 30], torch.ones(3, 40)), type(x)
        assert torch.allclose(t[0, 0, 5], torch.full((40,), 200 / 127.5 - 1), atol=1e-6), type(x)
    with pytest.raises(ImageInputError, match="alpha must be one of"):
        load_image(p, alpha="grey")


# --------------------------------------------------------------------------- #
# to_model_tensor
# --------------------------------------------------------------------------- #
def test_layouts_agree():
    u8 = _gradient(64, 64)
    f = torch.from_numpy(u8).float() / 255.0
    ref = to_model_tensor(Image.fromarray(u8), 32)
    assert ref.shape == (1, 3, 32, 32) and ref.dtype == torch.float32
    assert ref.min() >= -1 and ref.max() <= 1
    cases = {
        "numpy uint8 HWC": u8,
        "numpy float HWC": u8.astype(np.float32) / 255.0,
        "comfy BHWC": f[None],
        "HWC tensor": f,
        "BCHW": f.permute(2, 0, 1)[None],
        "CHW": f.permute(2, 0, 1),
    }
    for what, x in cases.items():
        out = to_model_tensor(x, 32, name=what)
        assert out.shape == (1, 3, 32, 32), what
        assert torch.allclose(out, ref, atol=2.5 / 255), what


def test_tensor_batch_kept():
    x = torch.rand(5, 40, 40, 3)
    out = to_model_tensor(x, 16)
    assert out.shape == (5, 3, 16, 16)
    assert out.min() >= -1 and out.max() <= 1
    # batch elements stay in order
    assert torch.allclose(out[3], to_model_tensor(x[3], 16)[0])


def test_ambiguous_prefers_channels_last():
    x = torch.rand(3, 40, 3)  # H=3? no: channels-last wins -> HxWxC with H=3 -> too small
    with pytest.raises(ImageInputError, match="at least 32 px"):
        to_model_tensor(x, 16)


def test_grayscale_and_alpha_channels():
    g = torch.rand(1, 40, 40, 1)
    out = to_model_tensor(g, 16)
    assert out.shape == (1, 3, 16, 16)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    rgba = torch.rand(1, 40, 40, 4)
    assert torch.allclose(to_model_tensor(rgba, 16), to_model_tensor(rgba[..., :3], 16))
    gray2d = np.full((40, 40), 255, np.uint8)
    assert torch.allclose(to_model_tensor(gray2d, 8), torch.ones(1, 3, 8, 8))


def test_value_range_extremes():
    out = to_model_tensor(torch.zeros(1, 32, 32, 3), 32)
    assert torch.equal(out, -torch.ones_like(out))
    out = to_model_tensor(torch.ones(1, 32, 32, 3), 32)
    assert torch.equal(out, torch.ones_like(out))


def test_validation_errors():
    with pytest.raises(ImageInputError, match=r"must be in 0\.\.1, got min -0\.9"):
        to_model_tensor(torch.rand(1, 40, 40, 3) * 2 - 1, 16, name="front")
    with pytest.raises(ImageInputError, match="must be in 0..1.*divide 0..255 data by 255"):
        to_model_tensor(np.full((40, 40, 3), 200.0, np.float32), 16)
    nan = torch.rand(1, 40, 40, 3)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ImageInputError, match="NaN"):
        to_model_tensor(nan, 16)
    with pytest.raises(ImageInputError, match=r"front is 20x40 px.*at least 32"):
        to_model_tensor(torch.rand(40, 20, 3), 16, name="front")
    with pytest.raises(ImageInputError, match="channel axis"):
        to_model_tensor(torch.rand(1, 40, 40, 5), 16)
    with pytest.raises(ImageInputError, match="rank"):
        to_model_tensor(torch.rand(1, 1, 40, 40, 3), 16)
    with pytest.raises(ImageInputError, match="crop must be one of"):
        to_model_tensor(torch.rand(40, 40, 3), 16, crop="left")
    with pytest.raises(ImageInputError, match="unsupported image type"):
        to_model_tensor(12, 16)
    with pytest.raises(ImageInputError, match="size must be a positive integer"):
        to_model_tensor(torch.rand(40, 40, 3), 0)


def test_center_crop_vs_none():
    # left half black, centre square white, right part black
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 20:60] = 255
    center = to_model_tensor(a, 40, crop="center")
    assert torch.equal(center, torch.ones_like(center))  # exactly the white square, no resize
    none = to_model_tensor(a, 40, crop="none")
    assert none.shape == (1, 3, 40, 40)
    assert none[0, :, :, 0].max() < -0.9 and none[0, :, :, 20].min() > 0.9  # squashed, black borders
    # official path: crop='none' == PIL resize((S,S)) with the default (bicubic) filter
    official = np.asarray(Image.fromarray(a).resize((40, 40)), np.float32) / 127.5 - 1
    assert torch.allclose(none[0].permute(1, 2, 0), torch.from_numpy(official), atol=1e-6)


def test_path_input(tmp_path):
    p = tmp_path / "f.png"
    Image.fromarray(_gradient(64, 64)).save(p)
    assert to_model_tensor(str(p), 16).shape == (1, 3, 16, 16)


# --------------------------------------------------------------------------- #
# outputs
# --------------------------------------------------------------------------- #
def test_tensor_to_pil_and_comfy_roundtrip():
    u8 = _gradient(32, 32)
    x = to_model_tensor(u8, 32)
    assert np.array_equal(np.asarray(tensor_to_pil(x)), u8)
    assert np.array_equal(np.asarray(tensor_to_pil(x[0])), u8)
    assert tensor_to_pil(torch.full((3, 4, 4), 5.0)).getpixel((0, 0)) == (255, 255, 255)  # clamped
    with pytest.raises(ImageInputError, match=r"expected \[3,H,W\]"):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))
    c = to_comfy_image(x)
    assert c.shape == (1, 32, 32, 3) and c.dtype == torch.float32
    assert c.min() >= 0 and c.max() <= 1
    assert torch.allclose(to_model_tensor(c, 32), x, atol=1e-6)
    with pytest.raises(ImageInputError, match="NaN"):
        to_comfy_image(torch.full((1, 3, 4, 4), float("nan")))


def test_save_views(tmp_path):
    n = 6
    views = torch.linspace(-1, 1, n)[:, None, None, None].expand(n, 3, 16, 16).clone()
    views[:, 0, :4, :4] = -1  # different frames, no two identical
    res = save_views(views, tmp_path / "out", fps=10)
    assert [p.name for p in res["png"]] == [f"view_{i:03d}.png" for i in range(n)]
    assert all(p.exists() for p in res["png"])
    with Image.open(res["gif"]) as g:
        assert g.n_frames == n
        assert g.info.get("loop") == 0
        assert g.info.get("duration") == 100
    with Image.open(res["webp"]) as w:
        assert w.n_frames == n
    only = save_views(views, tmp_path / "gifonly", prefix="f", formats=("gif",))
    assert set(only) == {"gif"} and not list((tmp_path / "gifonly").glob("f_*.png"))
    with pytest.raises(ImageInputError, match="unknown format"):
        save_views(views, tmp_path, formats=("mp4",))
    with pytest.raises(ImageInputError, match=r"\[N,3,H,W\]"):
        save_views(torch.zeros(2, 1, 8, 8), tmp_path)


# --------------------------------------------------------------------------- #
# masks
# --------------------------------------------------------------------------- #
def test_load_mask_file_modes(tmp_path):
    m = np.zeros((48, 48), np.uint8)
    m[10:30, 10:30] = 255
    for mode in ("L", "RGB", "RGBA"):
        p = tmp_path / f"m_{mode}.png"
        Image.fromarray(m, "L").convert(mode).save(p)
        out = load_mask(p, 24)
        assert out.shape == (1, 1, 24, 24) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.99 and out.min() == 0


def test_load_mask_arrays():
    hw = torch.zeros(40, 40)
    hw[:20] = 1
    assert load_mask(hw, 20).shape == (1, 1, 20, 20)
    comfy = torch.zeros(1, 40, 40)
    comfy[:, 5:15, 5:15] = 1
    assert load_mask(comfy, 20).shape == (1, 1, 20, 20)
    assert torch.equal(load_mask(comfy[..., None], 20), load_mask(comfy, 20))  # [1,H,W,1]
    b1 = np.zeros((1, 1, 40, 40), np.uint8)
    b1[..., :10, :10] = 255
    out = load_mask(b1, 40)
    assert out[0, 0, 0, 0] == 1 and out[0, 0, -1, -1] == 0
    assert load_mask(np.ones((40, 40), bool), 8).min() == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, torch.uint8, torch.int64, torch.bool])
def test_integer_masks_holding_0_1_are_read_as_0_1(dtype):
    m = np.zeros((40, 40), np.int64)
    m[:, :20] = 1
    x = torch.from_numpy(m).to(dtype) if isinstance(dtype, torch.dtype) else m.astype(dtype)
    out = load_mask(x, 40)
    assert out[0, 0, :, :20].min() == 1 and out[0, 0, :, 20:].max() == 0


def test_integer_masks_with_grey_levels_are_read_as_0_255(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[:, :20] = 255
    m[:, 20:] = 51
    out = load_mask(m, 40)
    assert out[0, 0, 0, 0] == 1 and abs(float(out[0, 0, 0, -1]) - 0.2) < 1e-6
    assert abs(float(load_mask(m.astype(np.int64), 40)[0, 0, 0, -1]) - 0.2) < 1e-6
    # a PNG label mask holding 0/1 follows the same rule
    label = (m == 255).astype(np.uint8)
    Image.fromarray(label).save(tmp_path / "label.png")
    assert torch.equal(load_mask(tmp_path / "label.png", 40), load_mask(label, 40))
    assert load_mask(tmp_path / "label.png", 40).max() == 1
    with pytest.raises(ImageInputError, match=r"integer mask values must be 0/1 or 0\.\.255, got 300\.\.300"):
        load_mask(np.full((40, 40), 300, np.int64), 8, name="style 1 mask")


def test_mask_batches_near_empty_too_large_and_nan_are_refused():
    comfy = torch.zeros(2, 40, 40)
    comfy[:, 5:15, 5:15] = 1
    with pytest.raises(ImageInputError, match=r"style 1 mask: got a batch of 2 masks; pass one mask"):
        load_mask(comfy, 20, name="style 1 mask")
    with pytest.raises(ImageInputError, match=r"style 1 mask: mask selects nothing \(its largest value is 1e-09\)"):
        load_mask(torch.full((40, 40), 1e-9), 20, name="style 1 mask")
    with pytest.raises(ImageInputError, match=r"style 1 mask: float mask values must be in 0\.\.1.*max 255.*Divide"):
        load_mask(torch.full((40, 40), 255.0), 20, name="style 1 mask")
    nan = torch.ones(40, 40)
    nan[3, 3] = float("nan")
    with pytest.raises(ImageInputError, match="style 1 mask: mask contains NaN"):
        load_mask(nan, 20, name="style 1 mask")
    assert load_mask(torch.full((40, 40), 2e-3), 20).max() > 1e-3  # faint but not empty: accepted


def test_load_mask_errors(tmp_path):
    with pytest.raises(ImageInputError, match=r"mask selects nothing \(it is all zeros\); paint the region to stylize white"):
        load_mask(torch.zeros(40, 40), 16)
    z = tmp_path / "z.png"
    Image.new("L", (40, 40), 0).save(z)
    with pytest.raises(ImageInputError, match="selects nothing"):
        load_mask(z, 16)
    with pytest.raises(ImageInputError, match="0..1"):
        load_mask(torch.full((40, 40), 2.0), 16)
    with pytest.raises(ImageInputError, match="wrong mask rank"):
        load_mask(torch.ones(40), 16)
    with pytest.raises(ImageInputError, match=r"\[1,1,H,W\]"):
        load_mask(torch.ones(1, 3, 40, 40), 16)
    with pytest.raises(ImageInputError, match="looks like an HxWxC image"):
        load_mask(np.ones((40, 40, 3), np.float32), 16)
    with pytest.raises(ImageInputError, match="file not found"):
        load_mask(tmp_path / "missing.png", 16)
    # region only outside the centre square
    side = torch.zeros(40, 80)
    side[:, :10] = 1
    with pytest.raises(ImageInputError, match="centred square crop"):
        load_mask(side, 16)
    assert load_mask(side, 16, crop="none").max() > 0.5
    with pytest.raises(ImageInputError, match="different aspect"):
        load_mask(side, 16, match_hw=(40, 40))
    assert load_mask(side, 16, crop="none", match_hw=(80, 160)).shape == (1, 1, 16, 16)


def test_mask_center_crop_matches_image_crop():
    m = torch.zeros(40, 80)
    m[:, 20:40] = 1  # left half of the centre square
    out = load_mask(m, 40)
    assert out[0, 0, :, :20].min() == 1 and out[0, 0, :, 20:].max() == 0


# --------------------------------------------------------------------------- #
# condition sets
# --------------------------------------------------------------------------- #
@pytest.fixture
def tiny_set(tmp_path):
    write_tiny_condition_set(tmp_path / "sphere32", size=32, n=32)
    return load_condition_set(tmp_path / "sphere32", 32)


def test_write_tiny_then_load(tmp_path, tiny_set):
    names = sorted(p.name for p in (tmp_path / "sphere32").iterdir())
    assert names[0] == "0000000.png" and names[-1] == "0000031.png" and len(names) == 32
    assert len(tiny_set) == 32 and tiny_set.images.shape == (32, 3, 32, 32)
    assert tiny_set.images.min() >= -1 and tiny_set.images.max() <= 1
    assert tiny_set.yaws_deg[1] == 11.25 and tiny_set.yaws_deg[16] == 180.0
    assert not torch.equal(tiny_set.images[0], tiny_set.images[8])  # views differ
    # deterministic
    write_tiny_condition_set(tmp_path / "again", size=32, n=32)
    assert (tmp_path / "again" / "0000005.png").read_bytes() == \
        (tmp_path / "sphere32" / "0000005.png").read_bytes()


def test_back_view_index(tiny_set):
    assert back_view_index(tiny_set) == 16
    assert back_view_index(CameraSet(torch.zeros(3, 3, 8, 8), [0, 170, 200])) == 1
    assert back_view_index(CameraSet(torch.zeros(2, 3, 8, 8), [-170, 10])) == 0  # wraps


def test_camera_set_select_and_to(tiny_set):
    sub = tiny_set.select([4, 2])
    assert sub.yaws_deg == [45.0, 22.5] and sub.indices == [4, 2]
    assert torch.equal(sub.images[0], tiny_set.images[4])
    subsub = sub.select([1])
    assert subsub.indices == [2]
    half = tiny_set.to("cpu", torch.float16)
    assert half.images.dtype == torch.float16 and len(half) == 32
    with pytest.raises(ImageInputError, match="yaws"):
        CameraSet(torch.zeros(2, 3, 8, 8), [0.0])


def test_select_views_even(tiny_set):
    """views=N of the whole set: one constant step from the front (the set is a full turntable)."""
    assert select_views(tiny_set, views=8).indices == list(range(0, 32, 4))
    assert select_views(tiny_set, views=32).indices == list(range(32))
    assert select_views(tiny_set, views=3).indices == [0, 10, 20]  # never a mix of 10 and 11 renders
    assert select_views(tiny_set, views=12).indices == list(range(0, 24, 2))  # 22.5 degrees, 270 of the circle
    assert select_views(tiny_set, views=1).indices == [0]
    assert len(select_views(tiny_set)) == 32
    with pytest.raises(TooManyViewsError, match="only 32 are available") as err:
        select_views(tiny_set, views=33)
    assert (err.value.asked, err.value.available, err.value.whole_set) == (33, 32, True)
    with pytest.raises(ImageInputError, match="at least 1"):
        select_views(tiny_set, views=0)


def test_select_views_yaw_range(tiny_set):
    sel = select_views(tiny_set, yaw_range=(300, 60))
    # 303.75 … 348.75, 0 … 56.25 in turntable order
    assert sel.indices == list(range(27, 32)) + list(range(0, 6))
    assert sel.yaws_deg[0] == 303.75 and sel.yaws_deg[-1] == 56.25
    assert select_views(tiny_set, yaw_range=(-90, 90)).indices == list(range(24, 32)) + list(range(0, 9))
    assert select_views(tiny_set, yaw_range=(0, 360)).indices == list(range(32))
    assert select_views(tiny_set, yaw_range=(180, 180)).indices == [16]
    assert select_views(tiny_set, yaw_range=(0, 90), views=3).indices == [0, 4, 8]  # 9 in range: the widest step
    assert select_views(tiny_set, yaw_range=(300, 60), views=3).indices == [27, 0, 5]  # the front in the middle
    # the case: 12 of the 17 renders of -90..90 at 11.25 degrees, centred, the front among them
    assert select_views(tiny_set, yaw_range=(-90, 90), views=12).indices == list(range(26, 32)) + list(range(0, 6))
    assert select_views(tiny_set, yaw_range=(90, 270), views=3).indices == [8, 16, 24]  # no front: widest step
    with pytest.raises(ImageInputError, match="no views with yaw"):
        select_views(tiny_set, yaw_range=(1, 2))
    with pytest.raises(TooManyViewsError, match=r"in yaw range \[0°, 20°\]; use views <= 2 or widen") as err:
        select_views(tiny_set, yaw_range=(0, 20), views=5)
    assert (err.value.available, err.value.whole_set) == (2, False)


def test_select_views_of_a_set_without_a_front():
    """User conditions need not hold yaw 0: the widest step, an arc centred in its range."""
    arc = CameraSet(torch.zeros(5, 3, 8, 8), [30.0, 40.0, 50.0, 60.0, 70.0])
    assert select_views(arc, yaw_range=(20, 80), views=2).yaws_deg == [30.0, 70.0]
    assert select_views(arc, yaw_range=(20, 80), views=1).yaws_deg == [50.0]
    assert select_views(arc, views=2).yaws_deg == [30.0, 70.0]  # not a turntable: the step does not wrap round
    turntable = CameraSet(torch.zeros(4, 3, 8, 8), [45.0, 135.0, 225.0, 315.0])
    assert select_views(turntable, views=2).yaws_deg == [45.0, 225.0]  # a full circle: half-way round


def test_is_front():
    assert is_front(0.0) and is_front(360.0) and is_front(-720.0) and is_front(1e-9) and is_front(360.0 - 1e-9)
    assert not is_front(11.25) and not is_front(-0.5)


@pytest.mark.parametrize("available, views, front, cyclic", [
    (17, 12, 8, False), (17, 5, 8, False), (9, 2, 4, False), (32, 12, 0, True), (32, 3, 0, True),
    (32, 12, 24, True), (17, 17, 3, False), (5, 4, None, False), (32, 7, 31, True),
])
def test_even_positions_invariants(available, views, front, cyclic):
    picks = even_positions(available, views, front, cyclic)
    assert len(picks) == views and picks == sorted(picks) and 0 <= picks[0] and picks[-1] < available
    assert len({b - a for a, b in zip(picks, picks[1:])}) <= 1
    if front is not None:
        assert front in picks


def test_even_positions_refuses_more_views_than_renders():
    with pytest.raises(ValueError, match=r"views must be in \[1, 4\]"):
        even_positions(4, 5, None, True)


def test_select_views_indices(tiny_set):
    assert select_views(tiny_set, indices=[16, 0]).indices == [16, 0]
    with pytest.raises(ImageInputError, match=r"duplicate view indices \[3\]"):
        select_views(tiny_set, indices=[3, 3])
    with pytest.raises(ImageInputError, match=r"out of range; valid indices are 0..31"):
        select_views(tiny_set, indices=[0, 32])
    with pytest.raises(ImageInputError, match="not both"):
        select_views(tiny_set, indices=[0], views=2)


def test_load_condition_set_errors(tmp_path):
    with pytest.raises(ImageInputError, match=r"not found.*cam_condition/sphere32.*make-tiny"):
        load_condition_set(tmp_path / "missing", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageInputError, match="no .png/.jpg images"):
        load_condition_set(tmp_path / "empty", 32)
    d = tmp_path / "odd"
    write_tiny_condition_set(d, size=32, n=4)
    Image.new("RGB", (48, 48)).save(d / "0000002.png")
    with pytest.raises(ImageInputError, match=r"differ in size: '0000002.png' is 48x48.*32x32"):
        load_condition_set(d, 32)
    d2 = tmp_path / "rect"
    write_tiny_condition_set(d2, size=32, n=2)
    Image.new("RGB", (48, 32)).save(d2 / "0000001.png")
    with pytest.raises(ImageInputError, match=r"'0000001.png'.*48x32.*must be square"):
        load_condition_set(d2, 32)
    d3 = tmp_path / "broken"
    write_tiny_condition_set(d3, size=32, n=2)
    (d3 / "0000001.png").write_bytes(b"garbage")
    with pytest.raises(ImageInputError, match=r"0000001.png.*could not read"):
        load_condition_set(d3, 32)


def test_load_condition_set_even_yaws_any_n(tmp_path):
    write_tiny_condition_set(tmp_path / "c", size=32, n=6)
    cs = load_condition_set(tmp_path / "c", 16)
    assert cs.yaws_deg == [0, 60, 120, 180, 240, 300] and cs.images.shape == (6, 3, 16, 16)
    assert back_view_index(cs) == 3


def test_find_condition_folder(tmp_path):
    w = tmp_path / "weights"
    with pytest.raises(ImageInputError, match=r"(?s)Searched:.*cam_condition.sphere32.*sphere32"):
        find_condition_folder(w)
    write_tiny_condition_set(w / "sphere32", size=32, n=2)
    assert find_condition_folder(w) == w / "sphere32"
    write_tiny_condition_set(w / "cam_condition", size=32, n=2)
    assert find_condition_folder(w) == w / "cam_condition"
    write_tiny_condition_set(w / "cam_condition" / "sphere32", size=32, n=2)
    assert find_condition_folder(w) == w / "cam_condition" / "sphere32"


def test_user_conditions():
    comfy = torch.rand(4, 40, 48, 3)
    cs = user_conditions(comfy, 16)
    assert cs.images.shape == (4, 3, 16, 16) and cs.yaws_deg == [0, 90, 180, 270]
    assert cs.source == "user"
    pils = [Image.fromarray(_gradient(40, 40)) for _ in range(2)]
    cs2 = user_conditions(pils, 16, yaws_deg=[10, 20])
    assert len(cs2) == 2 and cs2.yaws_deg == [10, 20]
    with pytest.raises(ImageInputError, match="one yaw per image"):
        user_conditions(comfy, 16, yaws_deg=[0, 1])
    with pytest.raises(ImageInputError, match="empty"):
        user_conditions([], 16)
