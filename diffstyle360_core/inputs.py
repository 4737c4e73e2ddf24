"""Every input of a back-view or turntable run, read and checked once, before the first model runs.

The pipeline, the command line and the nodes hand their images, masks, cameras,
guide frames and callbacks to these functions, so a value is checked where it
enters, by one rule, with one sentence that names it and says what to do
(:class:`~.options.InputError`). Image and mask *decoding* lives in
:mod:`.images`; numeric options in :mod:`.options`; here is what ties them to a
run: one content image, its styles and their masks, the cameras a turntable uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch

from .cameras import CameraSet, back_view_index, select_views
from .config import BACK_VIEW, MAIN
from .fusion import check_disjoint_masks, checked_blend_weights
from .images import image_hw, load_mask, to_model_tensor
from .model import DiffStyle360Model
from .options import VIEWS, InputError, InputTypeError

#: Slack on the [-1, 1] range of camera-condition images (rounding from other tools).
_CAMERA_RANGE_TOL = 1e-3


@dataclass
class Style:
    """One style region for :meth:`~.pipeline.DiffStyle360Pipeline.stylize`.

    ``images``: one style image, or several to interpolate (§4) with ``weights``
    (for two styles ``alpha_weights(α)`` = (1-α, α)). ``backs``: their back views
    (generated with the back-view model when None). ``mask``: where this style
    applies, painted on the style image (1 = stylize); ``back_mask`` the same on
    the style's back view (default: nothing on the back). No mask: everywhere.
    """

    images: List[Any]
    weights: Optional[Sequence[float]] = None
    backs: Optional[List[Any]] = None
    mask: Any = None
    back_mask: Any = None


@dataclass
class StyleInput:
    """One style region as the models take it: ``[1,3,S,S]`` images in [-1,1], checked weights and mask."""

    fronts: List[torch.Tensor]
    backs: List[Optional[torch.Tensor]]
    weights: Optional[List[float]]
    mask: Optional[torch.Tensor]  # [2,S,S] float32 (front, back plane) or None


@dataclass
class TurntableInputs:
    """The content image (and its back view, if given) and every style region of one turntable."""

    content: torch.Tensor
    content_back: Optional[torch.Tensor]
    styles: List[StyleInput]

    def fronts_without_backs(self) -> List[torch.Tensor]:
        """The front images whose back view must be generated (content first, then styles in order)."""
        return ([self.content] if self.content_back is None else []) + [
            f for s in self.styles for f, b in zip(s.fronts, s.backs) if b is None]


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #
def one_image(image: Any, name: str, size: int, crop: str) -> torch.Tensor:
    """One user image → ``[1,3,size,size]`` in [-1,1]; a batch of several is refused."""
    if image is None:
        raise InputTypeError(f"{name}: no image given")
    x = to_model_tensor(image, size, name=name, crop=crop)
    if x.shape[0] != 1:
        raise InputError(f"{name}: expected one image, got a batch of {x.shape[0]}; pick one image")
    return x


def front_images(fronts: Sequence[Any], size: int, crop: str) -> torch.Tensor:
    """The portraits of a back-view run → ``[B,3,size,size]``, one checked image each."""
    if isinstance(fronts, (str, bytes)) or not isinstance(fronts, Sequence) or not fronts:
        raise InputTypeError("fronts must be a non-empty list of images")
    return torch.cat([one_image(f, f"front {i + 1}", size, crop) for i, f in enumerate(fronts)])


# --------------------------------------------------------------------------- #
# styles
# --------------------------------------------------------------------------- #
def style_list(style: Any) -> List[Style]:
    """``style`` as :meth:`stylize` takes it (None, an image, a Style, a list of Style) → a list of Style."""
    if style is None:
        return []
    if isinstance(style, Style):
        return [style]
    if isinstance(style, (list, tuple)):
        if not style:
            raise InputError("style: the list is empty; give an image, a Style, a list of Style, "
                             "or None for plain novel views")
        if all(isinstance(s, Style) for s in style):
            return list(style)
        if any(isinstance(s, Style) for s in style):
            raise InputTypeError("style: a list of styles must hold only Style objects")
        raise InputTypeError(
            f"style: got a {type(style).__name__} of {len(style)} images; give one image, or "
            "Style(images=[...], weights=alpha_weights(α)) to blend them, or a list of Style with masks for regions"
        )
    return [Style(images=[style])]


def blend_weights(k: int, spec: Style) -> Optional[List[float]]:
    """Style ``k``'s blend weights: one per image, each in [0, 1], summing to 1 (None for one image)."""
    if not isinstance(spec.images, (list, tuple)) or not spec.images:
        raise InputError(f"style {k + 1}: no style image given (Style.images must be a non-empty list)")
    if spec.weights is None:
        if len(spec.images) > 1:
            raise InputError(f"style {k + 1}: several images need blend weights (e.g. alpha_weights(0.5))")
        return None
    return checked_blend_weights(spec.weights, len(spec.images), f"style {k + 1} blend weights")


def style_mask(spec: Style, size: int, k: int, crop: str) -> Optional[torch.Tensor]:
    """Style ``k``'s front and back masks → ``[2,size,size]`` float32 (no back mask: nothing on the back)."""
    if spec.mask is None:
        if spec.back_mask is not None:
            raise InputError(f"style {k + 1}: back_mask given without a front mask")
        return None
    hw = image_hw(spec.images[0], name=f"style {k + 1} image 1")
    front = load_mask(spec.mask, size, name=f"style {k + 1} mask", crop=crop, match_hw=hw)[0, 0]
    back_hw = (image_hw(spec.backs[0], name=f"style {k + 1} back 1")
               if spec.backs and spec.backs[0] is not None else None)
    back = (load_mask(spec.back_mask, size, name=f"style {k + 1} back_mask", crop=crop, match_hw=back_hw)[0, 0]
            if spec.back_mask is not None else torch.zeros_like(front))
    return torch.stack([front, back]).float()


def check_regions(styles: Sequence[StyleInput]) -> None:
    """Several styles: every one has a mask, and no pixel belongs to two (sum of masks <= 1)."""
    if len(styles) < 2:
        return
    if any(s.mask is None for s in styles):
        raise InputError("with several styles every style needs a mask (which region gets which style)")
    check_disjoint_masks([s.mask for s in styles])


def read_style(k: int, spec: Style, size: int, crop: str) -> StyleInput:
    weights = blend_weights(k, spec)
    fronts = [one_image(img, f"style {k + 1} image {j + 1}", size, crop) for j, img in enumerate(spec.images)]
    if spec.backs is not None and (not isinstance(spec.backs, (list, tuple)) or len(spec.backs) != len(fronts)):
        n = len(spec.backs) if isinstance(spec.backs, (list, tuple)) else type(spec.backs).__name__
        raise InputError(f"style {k + 1}: {n} back views for {len(fronts)} images; give one per image")
    backs = [one_image(b, f"style {k + 1} back {j + 1}", size, crop) if b is not None else None
             for j, b in enumerate(spec.backs or [None] * len(fronts))]
    return StyleInput(fronts, backs, weights, style_mask(spec, size, k, crop))


def read_turntable(content: Any, content_back: Any, style: Any, size: int, crop: str) -> TurntableInputs:
    """Every image and mask of a turntable read and checked (content, its back, each style region)."""
    x_content = one_image(content, "content", size, crop)
    x_back = one_image(content_back, "content_back", size, crop) if content_back is not None else None
    styles = [read_style(k, spec, size, crop) for k, spec in enumerate(style_list(style))]
    check_regions(styles)
    return TurntableInputs(x_content, x_back, styles)


# --------------------------------------------------------------------------- #
# cameras and guide frames
# --------------------------------------------------------------------------- #
def _check_camera_images(images: torch.Tensor, what: str) -> None:
    """Condition images as the ControlNet takes them: real data (not meta), finite, in [-1, 1]."""
    if images.is_meta:
        raise InputError(f"{what}: the condition images are on the meta device (no data); load real images")
    if not bool(torch.isfinite(images).all()):
        raise InputError(f"{what}: the condition images contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - _CAMERA_RANGE_TOL or hi > 1.0 + _CAMERA_RANGE_TOL:
        raise InputError(
            f"{what}: condition images must be in [-1, 1], got min {lo:.4g}, max {hi:.4g}; build the set "
            "with cameras.user_conditions from 0..1 images (or load_condition_set from files)"
        )


def camera_set(cameras: Any, default: Optional[CameraSet], views: Any, size: int) -> CameraSet:
    """The cameras of a turntable: ``cameras`` as given, else ``views`` evenly spaced ones of ``default``."""
    if cameras is not None and not isinstance(cameras, CameraSet):
        raise InputTypeError(
            f"cameras must be a CameraSet (see cameras.load_condition_set / user_conditions), "
            f"got {type(cameras).__name__}"
        )
    if cameras is not None and views is not None:
        raise InputError("give either views (evenly spaced cameras of the loaded set) or cameras, not both; "
                         "to pick views of your own set use cameras=select_views(cameras, views=N)")
    cams = cameras if cameras is not None else default
    if cams is None:
        raise InputError("no camera conditions: load a condition set (cam_condition/sphere32) or pass cameras")
    if cameras is None and views is not None:
        cams = select_views(cams, views=VIEWS.check(views))
    if cams.size != size:
        raise InputError(
            f"camera conditions are {cams.size}px but the model works at {size}px; "
            f"load them with load_condition_set(folder, {size})"
        )
    _check_camera_images(cams.images, "cameras")
    return cams


def back_camera(camera: Any, default: Optional[CameraSet], size: int) -> torch.Tensor:
    """The back-view model's pose condition ``[1,3,size,size]``: ``camera``, else the set's view nearest 180°."""
    if camera is None:
        cams = camera_set(None, default, None, size)
        return cams.images[back_view_index(cams)][None]
    if not torch.is_tensor(camera):
        raise InputTypeError(f"camera must be a [1,3,{size},{size}] tensor in [-1,1], got {type(camera).__name__}")
    if tuple(camera.shape) not in ((1, 3, size, size), (3, size, size)):
        raise InputError(f"camera must be [1,3,{size},{size}] in [-1,1], got {tuple(camera.shape)}")
    _check_camera_images(camera, "camera")
    return camera.reshape(1, 3, size, size).float()


def guide_frames(frames: Any, n: int, size: int, crop: str) -> Optional[torch.Tensor]:
    """Guide frames for the 3D-aware initial noise: one image per view, or None."""
    if frames is None:
        return None
    guide = to_model_tensor(frames, size, name="guide_frames", crop=crop)
    if guide.shape[0] != n:
        raise InputError(f"guide_frames: got {guide.shape[0]} frames for {n} views; give one per view")
    return guide


# --------------------------------------------------------------------------- #
# everything else a call takes
# --------------------------------------------------------------------------- #
def check_models(main: Any, back_view_model: Any, cameras: Any) -> None:
    """A pipeline's parts: each model of its kind (main, back view), the cameras a CameraSet."""
    for slot, model, kind in (("main", main, MAIN), ("back_view_model", back_view_model, BACK_VIEW)):
        if model is not None and not isinstance(model, DiffStyle360Model):
            raise InputTypeError(f"{slot} must be a DiffStyle360Model, got {type(model).__name__}")
        if model is not None and model.config.kind != kind:
            raise InputError(f"{slot} got a {model.config.kind} model; pass the {kind} weights")
    if cameras is not None and not isinstance(cameras, CameraSet):
        raise InputTypeError(f"cameras must be a CameraSet, got {type(cameras).__name__}")


def progress_callback(progress: Any) -> Optional[Callable]:
    """A progress receiver must be callable (or None): refused before any compute, not at the first step."""
    if progress is not None and not callable(progress):
        raise InputTypeError(
            f"progress must be a function taking a ProgressEvent (or None), got {type(progress).__name__}"
        )
    return progress


def latents(x: Any) -> torch.Tensor:
    """Latents to decode: a real ``[N,4,h,w]`` tensor."""
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 4:
        raise InputError(f"latents must be [N,4,h,w], got {getattr(x, 'shape', type(x).__name__)}")
    if x.is_meta:
        raise InputError("latents are on the meta device (no data); pass the output of denoise")
    return x


class NonFiniteOutputError(InputError):
    """A model produced NaN/inf: not the user's image, but damaged weights or config (or an fp16 overflow)."""


def finite_output(x: torch.Tensor, what: str) -> torch.Tensor:
    """A model output holding NaN/inf is an error that names the likely cause, never a black or noisy picture."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteOutputError(
            f"the {what} came out as NaN or infinite values: the weights or the model's config.json are most likely "
            "damaged (convert the official checkpoint again); in float16 it can also be an overflow (try fp32)"
        )
    return x
