"""Image I/O and validation: every user image passes through here.

Follows ``/work/shared/reference/diffportrait360-facts.md`` §1 ("Preprocessing of
every image", "Output"). The official code does, for every image (front view,
back view and the camera-condition renders alike)::

    PIL.Image.open(p).convert("RGB").resize((512, 512))   # no crop
    ToTensor(); Normalize(0.5, 0.5)                        # -> [-1, 1]

``Image.resize`` without a filter argument uses BICUBIC for RGB images (Pillow
>= 7), so :func:`to_model_tensor` resizes with bicubic too. One deliberate
difference: the default ``crop="center"`` centre-crops to a square before the
resize, because the official plain resize squashes non-square portraits;
``crop="none"`` reproduces the official behaviour exactly.

Two more differences from the official reading, both deliberate and documented:

* **EXIF rotation** is applied (phone photos store their rotation there); the
  official code does not apply it, so a rotated phone photo reaches its model
  sideways.
* **Transparency**: ``alpha="drop"`` (default) drops the alpha channel like the
  official ``.convert("RGB")`` (transparent pixels keep whatever colour they
  store, often black); ``alpha="white"`` / ``"black"`` composite onto that
  background first.

One rule for integer data, images and masks alike (:func:`_integer_levels`):
bool arrays, and integer arrays (uint8, int64, …) whose largest value is 1, are
0/1 labels (1 = white); other integer arrays are 0..255 grey levels (values
outside 0..255 are refused). So an int64 0/1 image and the same int64 0/1 mask
mean the same pixels. Floats must lie in 0..1. Image *files* are read as the
official code reads them (8-bit, no relabelling); mask files follow the rule.

Masks (:func:`load_mask`): one mask per call (a batch of several is refused),
and a mask that is (nearly) zero everywhere is refused.

Outputs are decoded frames in [-1, 1]; the official code clamps them, maps them to
[0, 1] and writes a 32-frame, 10 fps video. :func:`save_views` writes numbered
PNGs plus a looping GIF/WebP turntable at the same default 10 fps, through
:class:`~diffstyle360_core.cli.outputs.RunOutput` (all files or none, no stale views).

Bad input raises :class:`ImageInputError` (a ``ValueError``) with a message that
names the input and says what to do, rather than a torch traceback later on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


from .options import ALPHA_MODES, ASPECT_TOL, CROP_MODES, InputError

__all__ = [
    "ImageInputError",
    "MIN_SIDE",
    "CROP_MODES",
    "IMAGE_SUFFIXES",
    "load_image",
    "to_model_tensor",
    "tensor_to_pil",
    "to_comfy_image",
    "load_mask",
    "ALPHA_MODES",
]

#: Smallest accepted image side in pixels (before crop and resize).
MIN_SIDE = 32
#: A mask whose largest value is below this selects nothing.
MASK_EMPTY = 1e-3
#: File suffixes read as images by folder loaders.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Slack allowed on the 0..1 range of float inputs (rounding from other tools).
_RANGE_TOL = 1e-3
_CHANNELS = (1, 3, 4)


class ImageInputError(InputError):
    """A user-supplied image, mask or image folder cannot be used as given."""


# --------------------------------------------------------------------------- #
# small validators
# --------------------------------------------------------------------------- #
def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ImageInputError(f"size must be a positive integer (pixels), got {size!r}")
    return int(size)


def _check_crop(crop: Any) -> str:
    if crop not in CROP_MODES:
        raise ImageInputError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    return crop


def _check_alpha(alpha: Any) -> str:
    if alpha not in ALPHA_MODES:
        raise ImageInputError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    return alpha


def _check_min_side(h: int, w: int, name: str) -> None:
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(
            f"{name} is {w}x{h} px; the smallest side must be at least {MIN_SIDE} px. "
            "Use a larger image (the model works at 512x512)."
        )


def _center_box(h: int, w: int) -> tuple[int, int, int]:
    """(top, left, side) of the centred square crop."""
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s


# --------------------------------------------------------------------------- #
# PIL side
# --------------------------------------------------------------------------- #
def _open_pil(path: Any, name: str) -> Image.Image:
    """Open and fully decode an image file, EXIF rotation applied."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise ImageInputError(
            f"{name}: file not found: '{p}'. Check the path "
            f"(relative paths are resolved from '{Path.cwd()}')."
        )
    if p.is_dir():
        raise ImageInputError(
            f"{name}: '{p}' is a folder, not an image file. Pass the path of a PNG or JPEG file."
        )
    try:
        with Image.open(p) as im:
            im.load()
            # Phone photos store their rotation in EXIF; ignoring it would hand the
            # model a sideways head. (The official code does not apply it.)
            out = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(e))
        size = (f" ({int(found.group(1)) / 1e6:.0f} megapixels; Pillow's safety limit is "
                f"{int(found.group(2)) / 1e6:.0f})") if found else ""
        raise ImageInputError(
            f"{name}: '{p}' is too large{size}. Downscale it (the model works at 512x512) and try again."
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(
            f"{name}: could not read '{p}' as an image ({type(e).__name__}: {e}). "
            "Re-save it as PNG or JPEG and try again."
        ) from e
    return out


def _high_bit_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float single-channel images -> 8-bit 'L'."""
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        if a.size and np.nanmax(a) <= 1.0 + _RANGE_TOL:
            a = a * 255.0
    elif a.size and a.max() > 255:
        a = a / 257.0  # 0..65535 -> 0..255
    a = np.nan_to_num(a, nan=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def _pil_to_rgb(im: Image.Image, name: str, alpha: str = "drop") -> Image.Image:
    """Any PIL mode -> 'RGB'. Alpha is dropped (default) or composited onto white/black (see load_image)."""
    if im.mode == "RGB":
        return im
    try:
        if alpha != "drop" and (im.mode in ("RGBA", "LA", "PA", "La", "RGBa")
                                or (im.mode == "P" and "transparency" in im.info)):
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if alpha == "white" else (0, 0, 0, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return _high_bit_to_l(im).convert("RGB")
        if im.mode == "P" or im.mode == "PA":
            # via RGBA so palette transparency does not trigger Pillow's warning
            return im.convert("RGBA").convert("RGB")
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageInputError(
            f"{name}: cannot convert image mode '{im.mode}' to RGB ({e}). "
            "Re-save it as an 8-bit RGB PNG or JPEG."
        ) from e


def load_image(path: str | os.PathLike, *, name: str = "image", alpha: str = "drop") -> Image.Image:
    """Read an image file as an RGB ``PIL.Image``.

    * Missing / unreadable / too large files raise :class:`ImageInputError` naming the path.
    * EXIF orientation is applied (phone photos; the official code does not).
    * Grayscale, palette, CMYK and 16-bit images are converted to RGB.
    * ``alpha="drop"`` (default): **alpha is dropped, not composited**; transparent
      pixels keep whatever colour they store (often black). This matches the official
      ``.convert('RGB')``. ``alpha="white"`` / ``"black"``: composite onto that background.
    """
    alpha = _check_alpha(alpha)
    return _pil_to_rgb(_open_pil(path, name), name, alpha)


# --------------------------------------------------------------------------- #
# array side
# --------------------------------------------------------------------------- #
def _as_numpy(x: Any, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        if x.is_meta:
            raise ImageInputError(f"{name}: the tensor is on the meta device (it has a shape but no data); "
                                  "pass a tensor with real values")
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _integer_levels(a: np.ndarray, name: str, kind: str) -> np.ndarray:
    """The one rule for bool / integer images and masks -> uint8 0..255.

    bool, or largest value 1: 0/1 labels, 1 read as white (255); otherwise 0..255
    grey levels as they are. Values outside 0..255 are refused.
    """
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 255:
        raise ImageInputError(
            f"{name}: integer {kind} values must be 0/1 or 0..255, got {lo}..{hi}. "
            "Pass 0/1 labels, 0..255 grey levels (uint8) or float 0..1 data."
        )
    if hi <= 1:
        return a.astype(np.uint8) * np.uint8(255)
    return a if a.dtype == np.uint8 else a.astype(np.uint8)


def _normalize_dtype(a: np.ndarray, name: str, *, kind: str = "image") -> np.ndarray:
    """-> uint8 array (by :func:`_integer_levels`) or float32 array validated to lie in [0, 1]."""
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        return _integer_levels(a, name, kind)
    if not np.issubdtype(a.dtype, np.floating):
        raise ImageInputError(f"{name}: unsupported {kind} dtype {a.dtype}; use uint8 or float")
    return _float_01(a, name, kind, "Pass 0..1 images (divide 0..255 data by 255; map -1..1 data with (x+1)/2).")


def _float_01(a: np.ndarray, name: str, kind: str, hint: str) -> np.ndarray:
    """Float data checked to be finite and within 0..1 (rounding slack clipped) -> float32."""
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ImageInputError(
            f"{name}: {kind} contains NaN or infinite values; check the node or code that produced it."
        )
    if a.size:
        lo, hi = float(a.min()), float(a.max())
        if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
            raise ImageInputError(
                f"{name}: float {kind} values must be in 0..1, got min {lo:.4g}, max {hi:.4g}. {hint}"
            )
    return np.clip(a, 0.0, 1.0)


def _to_bhwc(a: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """Detect the layout of an image array; return (B,H,W,C) and whether it was batched.

    Channel axis = the one of size 1/3/4; channels-last wins when both ends qualify.
    """
    shape = tuple(a.shape)
    if a.ndim == 2:
        return a[None, :, :, None], False
    if a.ndim == 3:
        if shape[-1] in _CHANNELS:
            return a[None], False
        if shape[0] in _CHANNELS:
            return np.moveaxis(a, 0, -1)[None], False
    elif a.ndim == 4:
        if shape[-1] in _CHANNELS:
            return a, True
        if shape[1] in _CHANNELS:
            return np.moveaxis(a, 1, -1), True
    else:
        raise ImageInputError(
            f"{name}: expected an image of rank 2-4 (HxW, HxWxC, CxHxW, BxHxWxC or BxCxHxW), "
            f"got shape {shape}"
        )
    raise ImageInputError(
        f"{name}: cannot find the channel axis in shape {shape}; expected 1, 3 or 4 channels "
        "as HxWxC / BxHxWxC (ComfyUI IMAGE) or CxHxW / BxCxHxW."
    )


def image_hw(image: Any, *, name: str = "image") -> tuple[int, int]:
    """(height, width) of a user image in any layout :func:`to_model_tensor` accepts.

    Used to check that a mask drawn for an image has that image's aspect ratio.
    """
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, (str, os.PathLike)):
        im = _open_pil(image, name)
        return im.height, im.width
    bhwc, _ = _to_bhwc(_as_numpy(image, name), name)
    return int(bhwc.shape[1]), int(bhwc.shape[2])


def _resize_float(img: np.ndarray, size: int, resample: int) -> np.ndarray:
    """HxWxC float32 -> size x size x C float32, per channel with PIL mode 'F'."""
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c]), mode="F")
                   .resize((size, size), resample), dtype=np.float32)
        for c in range(img.shape[-1])
    ]
    return np.stack(chans, axis=-1)


def _prepare_one(img: np.ndarray, size: int, crop: str) -> np.ndarray:
    """HxWx3 uint8 or float(0..1) -> size x size x 3 float32 in [0, 1]."""
    if crop == "center":
        top, left, s = _center_box(img.shape[0], img.shape[1])
        img = img[top:top + s, left:left + s]
    if img.dtype == np.uint8:
        # exactly the official path: an RGB uint8 PIL image resized with bicubic
        out = np.asarray(Image.fromarray(np.ascontiguousarray(img), mode="RGB")
                         .resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    else:
        out = np.clip(_resize_float(img, size, Image.BICUBIC), 0.0, 1.0)
    return out


def _composite(rgba: np.ndarray, alpha: str) -> np.ndarray:
    """BxHxWx4 (uint8 or float 0..1) -> BxHxWx3: drop alpha, or composite onto white/black."""
    if alpha == "drop":
        return rgba[..., :3]
    if rgba.dtype == np.uint8:
        rgb, a = rgba[..., :3].astype(np.float32) / 255.0, rgba[..., 3:].astype(np.float32) / 255.0
        bg = 1.0 if alpha == "white" else 0.0
        return np.clip(np.rint((rgb * a + bg * (1.0 - a)) * 255.0), 0, 255).astype(np.uint8)
    rgb, a = rgba[..., :3], rgba[..., 3:]
    bg = 1.0 if alpha == "white" else 0.0
    return (rgb * a + bg * (1.0 - a)).astype(np.float32)


def to_model_tensor(image: Any, size: int, *, name: str = "image",
                    crop: str = "center", alpha: str = "drop") -> torch.Tensor:
    """Any user image -> model input ``[B, 3, size, size]`` float32 in [-1, 1].

    Accepts a ``PIL.Image``, a file path, a numpy array (HxWxC / HxW, integer
    0..255 or 0/1 labels as :func:`_integer_levels` reads them, or float 0..1) or a torch tensor in ComfyUI layout ``[B,H,W,C]`` / ``[H,W,C]``
    (float 0..1) or channels-first ``[B,C,H,W]`` / ``[C,H,W]``. The channel axis is
    the one of size 1, 3 or 4; when both ends qualify, channels-last is assumed.
    1 channel is repeated to RGB. A 4th (alpha) channel is dropped (``alpha="drop"``,
    the official behaviour) or composited onto ``"white"`` / ``"black"``.

    ``crop="center"`` (default) centre-crops to a square, then resizes;
    ``crop="none"`` resizes the whole image like the official code (distorts
    non-square inputs). Resizing uses PIL bicubic, the default filter of the
    official ``PIL.Image.resize((512, 512))``.

    Single images give ``[1,3,S,S]``; batches keep their batch size.
    """
    size = _check_size(size)
    crop = _check_crop(crop)
    alpha = _check_alpha(alpha)
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image, name=name, alpha=alpha)
    if isinstance(image, Image.Image):
        a = np.asarray(_pil_to_rgb(image, name, alpha))[None]  # 1xHxWx3 uint8
    elif isinstance(image, np.ndarray) or torch.is_tensor(image):
        a, _ = _to_bhwc(_as_numpy(image, name), name)
        a = _normalize_dtype(a, name)
    else:
        raise ImageInputError(
            f"{name}: unsupported image type {type(image).__name__}; pass a PIL image, "
            "a file path, a numpy array or a torch tensor."
        )
    b, h, w, c = a.shape
    if b == 0:
        raise ImageInputError(f"{name}: the image batch is empty")
    if c not in _CHANNELS:
        raise ImageInputError(f"{name}: expected 1, 3 or 4 channels, got {c}")
    _check_min_side(h, w, name)
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    elif c == 4:
        a = _composite(a, alpha)
    out = np.stack([_prepare_one(a[i], size, crop) for i in range(b)], axis=0)
    t = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))
    return (t * 2.0 - 1.0).to(torch.float32).contiguous()


# --------------------------------------------------------------------------- #
# outputs
# --------------------------------------------------------------------------- #
def _check_output(x: Any, what: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise ImageInputError(f"{what}: expected a torch tensor, got {type(x).__name__}")
    x = x.detach().cpu().float()
    if not torch.isfinite(x).all():
        raise ImageInputError(
            f"{what}: tensor contains NaN or infinite values (the model diverged; "
            "try float32 or a different seed)."
        )
    return x


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """``[3,H,W]`` or ``[1,3,H,W]`` tensor in [-1, 1] -> RGB ``PIL.Image`` (clamped, rounded)."""
    x = _check_output(x, "tensor_to_pil")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ImageInputError(
            f"tensor_to_pil: expected [3,H,W] or [1,3,H,W] in [-1,1], got shape {tuple(x.shape)}"
        )
    u8 = ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(u8.permute(1, 2, 0).numpy(), mode="RGB")


def to_comfy_image(x: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` in [-1, 1] -> ComfyUI IMAGE ``[B,H,W,3]`` float32 in [0, 1] on CPU."""
    x = _check_output(x, "to_comfy_image")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ImageInputError(
            f"to_comfy_image: expected [B,3,H,W] in [-1,1], got shape {tuple(x.shape)}"
        )
    return ((x.clamp(-1, 1) + 1.0) * 0.5).permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------- #
# masks
# --------------------------------------------------------------------------- #
def _mask_to_bhw(a: np.ndarray, name: str) -> np.ndarray:
    shape = tuple(a.shape)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        if shape[-1] == 1 and shape[0] != 1:
            return a[None, :, :, 0]  # [H,W,1]: one mask with a channel axis, never H masks of width W
        if shape[-1] in _CHANNELS and min(shape[0], shape[1]) >= MIN_SIDE and shape[-1] < MIN_SIDE:
            raise ImageInputError(
                f"{name}: shape {shape} looks like an HxWxC image, not a mask. Pass a "
                "single-channel HxW (or 1xHxW ComfyUI MASK) array, or the mask's file path."
            )
        return a
    if a.ndim == 4:
        if shape[1] == 1:
            return a[:, 0]  # [B,1,H,W]
        if shape[-1] == 1:
            return a[..., 0]  # [B,H,W,1]
        raise ImageInputError(
            f"{name}: a 4-D mask must be [1,1,H,W] or [1,H,W,1] (one channel), got shape {shape}"
        )
    raise ImageInputError(
        f"{name}: wrong mask rank {a.ndim} (shape {shape}); expected [H,W], [1,H,W] "
        "(ComfyUI MASK), [1,1,H,W] or [1,H,W,1]"
    )


def _mask_values(a: np.ndarray, name: str) -> np.ndarray:
    """Mask array (bool, integer or float) -> float32 in [0, 1], by the rules of :func:`load_mask`."""
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        return _integer_levels(a, name, "mask").astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ImageInputError(f"{name}: unsupported mask dtype {a.dtype}; use float 0..1, bool or integer 0/1")
    return _float_01(a, name, "mask",
                     "Divide 0..255 data by 255 (or pass it as uint8), and clamp or threshold other data.")


def _check_not_empty(m: np.ndarray, name: str, cropped: bool = False) -> None:
    peak = float(m.max()) if m.size else 0.0
    if peak < MASK_EMPTY:
        found = "it is all zeros" if peak <= 0.0 else f"its largest value is {peak:.3g}"
        if cropped:
            raise ImageInputError(
                f"{name}: mask selects nothing inside the centred square crop ({found}); paint the "
                "region to stylize white inside the crop, or use crop='none'."
            )
        raise ImageInputError(
            f"{name}: mask selects nothing ({found}); paint the region to stylize white "
            "(1.0, or 255 in an 8-bit image)."
        )


def read_mask_file(path: str | os.PathLike, *, name: str = "mask") -> Image.Image:
    """Decode a mask file once (EXIF rotation applied, modes kept): :func:`load_mask` takes the result."""
    return _open_pil(path, name)


def load_mask(path_or_array: Any, size: int, *, name: str = "mask", crop: str = "center",
              match_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """A region mask -> ``[1,1,size,size]`` float32 in [0, 1].

    * File path or ``PIL.Image`` (grayscale/RGB/RGBA): the luminance ('L') channel,
      read by the integer rule below (an 8-bit image whose brightest pixel is 1 is
      a 0/1 label mask). Alpha is ignored: paint the region to stylize white on black.
    * numpy / torch ``[H,W]``, ``[H,W,1]``, ``[1,H,W]`` (ComfyUI MASK), ``[1,1,H,W]``
      or ``[1,H,W,1]``:

      - float: must lie in 0..1 (values > 1 are refused: divide 0..255 data by 255);
      - bool: 0/1;
      - integer (uint8, int64, ...): **largest value 1 → read as 0/1**; otherwise
        0..255 grey levels, divided by 255 (values outside 0..255 are refused) —
        the same rule as for integer images (:func:`_integer_levels`).

    One mask per call: a batch of several masks (``[B,H,W]`` with B > 1) is refused
    (nothing is silently ignored). NaN/inf values are refused, and so is a mask that
    selects (nearly) nothing: largest value below ``MASK_EMPTY`` (1e-3).

    Non-square masks are treated like images: ``crop="center"`` centre-crops,
    ``crop="none"`` resizes (use the same ``crop`` as for the image it belongs to).
    ``match_hw=(H, W)`` of that image, if given, must have the mask's aspect ratio.
    Resizing uses bilinear (no bicubic overshoot).
    """
    size = _check_size(size)
    crop = _check_crop(crop)
    if isinstance(path_or_array, (str, os.PathLike)):
        path_or_array = _open_pil(path_or_array, name)
    if isinstance(path_or_array, Image.Image):
        im = path_or_array
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            im = _high_bit_to_l(im)
        elif im.mode in ("P", "PA"):
            im = im.convert("RGBA").convert("L")
        else:
            im = im.convert("L")
        a = np.asarray(im, dtype=np.uint8)[None]
    elif isinstance(path_or_array, np.ndarray) or torch.is_tensor(path_or_array):
        a = _mask_to_bhw(_as_numpy(path_or_array, name), name)
    else:
        raise ImageInputError(
            f"{name}: unsupported mask type {type(path_or_array).__name__}; pass a file path, "
            "a PIL image, a numpy array or a torch tensor."
        )
    b, h, w = a.shape
    if b == 0:
        raise ImageInputError(f"{name}: the mask batch is empty")
    if b > 1:
        raise ImageInputError(
            f"{name}: got a batch of {b} masks; pass one mask (pick one, e.g. mask[0]). "
            "For several regions give each style its own mask."
        )
    a = _mask_values(a, name)
    _check_min_side(h, w, name)
    if match_hw is not None:
        ih, iw = int(match_hw[0]), int(match_hw[1])
        if abs(w / h - iw / ih) > ASPECT_TOL * (iw / ih):
            raise ImageInputError(
                f"{name}: mask is {w}x{h} px but its image is {iw}x{ih} px (different aspect "
                "ratio). Export the mask at the image's framing."
            )
    m = a[0]
    _check_not_empty(m, name)
    if crop == "center":
        top, left, s = _center_box(h, w)
        m = m[top:top + s, left:left + s]
        _check_not_empty(m, name, cropped=True)
    m = np.clip(_resize_float(m[..., None], size, Image.BILINEAR)[..., 0], 0.0, 1.0)
    return torch.from_numpy(m[None, None].astype(np.float32)).contiguous()
