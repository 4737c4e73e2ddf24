"""Public API: back views and stylized turntables (Fig. 2a end to end).

A :class:`DiffStyle360Pipeline` holds the main model (content + style appearance
modules, pose ControlNet, view-consistency modules), the back-view model and a
camera-condition set. :meth:`~DiffStyle360Pipeline.stylize` is made of steps a
host can also call one by one: :meth:`~DiffStyle360Pipeline.prepare_references`
(back views + encoding), :meth:`~DiffStyle360Pipeline.denoise` and
:meth:`~DiffStyle360Pipeline.decode`. Every argument is checked through
:mod:`.options` and :mod:`.images` before the first model runs; per-call settings
are passed per call, so the models are left exactly as they were.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .attention import FusionCall, StyleEntry
from .cameras import CameraSet, back_view_index, select_views
from .config import BACK_VIEW, MAIN
from .devices import empty_cache
from .fusion import alpha_weights, check_disjoint_masks, checked_blend_weights
from .images import image_hw, load_mask, to_model_tensor
from . import loading
from .loading import model_device_dtype
from .model import DiffStyle360Model
from .options import (
    CROP_MODES,
    DECODE_CHUNK,
    VIEWS,
    FusionSettings,
    InputError,
    InputTypeError,
    SamplerOptions,
    WindowOptions,
    check_choice,
)
from .sampling import denoise_views, guide_frame_noise, make_scheduler, mix_seed, randn_rows, view_windows



# --------------------------------------------------------------------------- #
# inputs and results
# --------------------------------------------------------------------------- #
@dataclass
class Style:
    """One style region for :meth:`DiffStyle360Pipeline.stylize`.

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
class TurntableResult:
    views: torch.Tensor  # [N,3,H,W] in [-1,1], ordered as the cameras
    yaws_deg: List[float]
    content_back: torch.Tensor  # [1,3,H,W] in [-1,1]
    style_backs: List[List[torch.Tensor]] = field(default_factory=list)


@dataclass
class ProgressEvent:
    """One finished step: ``phase`` is "back views", "turntable" or "decode".

    ``step``/``total`` count within the phase, ``overall_step``/``overall_total``
    across the whole call (what a single progress bar shows). ``latents`` is a
    CPU copy of the phase's current x_t ``[B,4,h,w]`` (for previews; keeping it
    holds no GPU memory), None while decoding. ``denoised`` is the scheduler's
    current estimate of the clean latents x_0 (CPU copy; DDIM and Euler give one,
    the multistep solvers do not): what a preview should show.
    """

    phase: str
    step: int
    total: int
    overall_step: int
    overall_total: int
    latents: Optional[torch.Tensor] = None
    denoised: Optional[torch.Tensor] = None


ProgressCallback = Callable[[ProgressEvent], None]


class ModelPlacement:
    """Decides where a model is when it runs; the default leaves every model where it is.

    A host overrides :meth:`activate` to move the model about to run onto the GPU
    (and others off it): sequential offload, or ComfyUI's memory manager.
    """

    def activate(self, model: nn.Module) -> None:
        return None


@dataclass
class _StyleInput:
    fronts: List[torch.Tensor]
    backs: List[Optional[torch.Tensor]]
    weights: Optional[List[float]]
    mask: Optional[torch.Tensor]  # [2,H,W] float32 (front, back plane) or None


@dataclass
class References:
    """Encoded references of one turntable: content front+back and every style image front+back.

    Latents are ``[2,4,h,w]`` (front, back); ``styles`` keeps, per style region,
    the latents of its images, its blend weights and its mask. Built by
    :meth:`DiffStyle360Pipeline.prepare_references`; :meth:`release` drops the tensors.
    """

    content: Optional[torch.Tensor]
    styles: List[Tuple[List[torch.Tensor], Optional[List[float]], Optional[torch.Tensor]]]
    content_back: Optional[torch.Tensor]
    style_backs: List[List[torch.Tensor]]
    seed: int

    def release(self) -> None:
        self.content = self.content_back = None
        self.styles, self.style_backs = [], []


def _window_limits(model: DiffStyle360Model) -> tuple:
    """(most views per window, views per window as trained) of the model's view-consistency modules."""
    return model.config.temporal.max_views, model.config.temporal.window


def _style_slices(refs: "References") -> list:
    """Per style region: (its rows among the flattened style latents, blend weights, mask)."""
    slices, start = [], 0
    for latents, weights, mask in refs.styles:
        slices.append((slice(start, start + len(latents)), weights, mask))
        start += len(latents)
    return slices


class _Progress:
    """Turns per-phase step hooks into :class:`ProgressEvent` calls with an overall count."""

    def __init__(self, callback: Optional[ProgressCallback], total: int):
        self.callback, self.total, self.done = callback, total, 0

    def phase(self, name: str, steps: int):
        """A step hook for one phase, or None when nobody listens (the loop then copies nothing to the CPU)."""
        base = self.done
        self.done += steps
        if self.callback is None:
            return None

        def hook(step: int, total: int, latents: Optional[torch.Tensor], denoised=None) -> None:
            if self.callback is not None:
                self.callback(ProgressEvent(name, step, total, base + step, self.total, latents, denoised))

        return hook


def _digest(image: torch.Tensor) -> int:
    return zlib.crc32(image.detach().float().cpu().numpy().tobytes())


def _encode_reference(model: DiffStyle360Model, images: torch.Tensor, seed: int) -> torch.Tensor:
    """VAE latents with the posterior sampled as the official code does, seeded by (seed, image).

    Seeding by the image's own bytes keeps a reference's latent fixed wherever it
    sits in the argument list, and keeps the diffusion noise independent of how
    many references there are (so α = 0/1 reproduces a single style exactly).
    """
    generator = torch.Generator().manual_seed(mix_seed(seed, _digest(images)))  # CPU images: no device sync
    device, dtype = model_device_dtype(model)
    return model.encode(images.to(device, dtype), generator)


def _as_style_list(style) -> List[Style]:
    if style is None:
        return []
    if isinstance(style, Style):
        return [style]
    if isinstance(style, (list, tuple)) and style and all(isinstance(s, Style) for s in style):
        return list(style)
    if isinstance(style, (list, tuple)) and any(isinstance(s, Style) for s in style):
        raise InputTypeError("style: a list of styles must hold only Style objects")
    return [Style(images=[style])]


def _blend_weights(k: int, spec: Style) -> Optional[List[float]]:
    if not isinstance(spec.images, (list, tuple)) or not spec.images:
        raise InputError(f"style {k + 1}: no style image given (Style.images must be a non-empty list)")
    if spec.weights is None:
        if len(spec.images) > 1:
            raise InputError(f"style {k + 1}: several images need blend weights (e.g. alpha_weights(0.5))")
        return None
    return checked_blend_weights(spec.weights, len(spec.images), f"style {k + 1} blend weights")


# --------------------------------------------------------------------------- #
# the pipeline
# --------------------------------------------------------------------------- #
class DiffStyle360Pipeline:
    def __init__(
        self,
        main: Optional[DiffStyle360Model] = None,
        back_view_model: Optional[DiffStyle360Model] = None,
        cameras: Optional[CameraSet] = None,
        *,
        placement: Optional[ModelPlacement] = None,
    ):
        for slot, model, kind in (("main", main, MAIN), ("back_view_model", back_view_model, BACK_VIEW)):
            if model is not None and not isinstance(model, DiffStyle360Model):
                raise InputTypeError(f"{slot} must be a DiffStyle360Model, got {type(model).__name__}")
            if model is not None and model.config.kind != kind:
                raise InputError(f"{slot} got a {model.config.kind} model; pass the {kind} weights")
        if cameras is not None and not isinstance(cameras, CameraSet):
            raise InputTypeError(f"cameras must be a CameraSet, got {type(cameras).__name__}")
        self.main = main
        self.back_view_model = back_view_model
        self.cameras = cameras
        self.placement = placement or ModelPlacement()

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        weights,
        *,
        device=None,
        dtype=None,
        style_module=None,
        conditions=None,
        load_main: bool = True,
        load_back_view: bool = True,
        placement: Optional[ModelPlacement] = None,
    ) -> "DiffStyle360Pipeline":
        """Load ``weights/main``, ``weights/back_view`` and ``weights/cam_condition`` (README, Weights).

        ``device``/``dtype``: None or "auto" = CUDA in float16 when present, else
        the CPU in float32 (:mod:`.devices`). ``conditions``: a folder of
        camera-condition images to use instead of the one inside ``weights``.
        """
        loading.weight_set_root(weights)
        if not (load_main or load_back_view):
            raise InputError("load_main and load_back_view are both False: nothing to load")
        main = loading.load_main(weights, device=device, dtype=dtype, style_module=style_module) if load_main else None
        back = loading.load_back_view(weights, device=device, dtype=dtype) if load_back_view else None
        size = (main or back).config.image_size
        return cls(main, back, loading.load_cameras(weights, size, conditions=conditions), placement=placement)

    @property
    def image_size(self) -> int:
        return (self.main or self.back_view_model).config.image_size

    @staticmethod
    def _trained_fusion(model: DiffStyle360Model, pairing: Optional[str], mask_mode: Optional[str]) -> tuple:
        """Pairing and mask mode: as given, else what a trained style module was trained with, else the paper's."""
        trained = getattr(model, "style_module_settings", None) or {}
        return (pairing if pairing is not None else trained.get("pairing", FusionSettings.pairing),
                mask_mode if mask_mode is not None else trained.get("mask_mode", FusionSettings.mask_mode))

    def _main_model(self) -> DiffStyle360Model:
        if self.main is None:
            raise InputError("no main model loaded (weights/main); load the weight set's main model")
        return self.main

    def _back_model(self) -> DiffStyle360Model:
        if self.back_view_model is None:
            raise InputError("no back-view model loaded (weights/back_view); load it or supply the back views")
        return self.back_view_model

    @staticmethod
    def _image(image, name: str, size: int, crop: str) -> torch.Tensor:
        if image is None:
            raise InputTypeError(f"{name}: no image given")
        x = to_model_tensor(image, size, name=name, crop=crop)
        if x.shape[0] != 1:
            raise InputError(f"{name}: expected one image, got a batch of {x.shape[0]}; pick one image")
        return x

    def _cameras(self, cameras, views, size: int) -> CameraSet:
        if cameras is not None and not isinstance(cameras, CameraSet):
            raise InputTypeError(
                f"cameras must be a CameraSet (see cameras.load_condition_set / user_conditions), "
                f"got {type(cameras).__name__}"
            )
        cams = cameras if cameras is not None else self.cameras
        if cams is None:
            raise InputError("no camera conditions: load a condition set (cam_condition/sphere32) or pass cameras")
        if cameras is None and views is not None:
            cams = select_views(cams, views=VIEWS.check(views))
        if cams.size != size:
            raise InputError(
                f"camera conditions are {cams.size}px but the model works at {size}px; "
                f"load them with load_condition_set(folder, {size})"
            )
        if not bool(torch.isfinite(cams.images).all()):
            raise InputError("cameras: the condition images contain NaN or infinite values")
        return cams

    def _back_camera(self, camera, size: int) -> torch.Tensor:
        if camera is None:
            cams = self._cameras(None, None, size)
            return cams.images[back_view_index(cams)][None]
        if not torch.is_tensor(camera):
            raise InputTypeError(f"camera must be a [1,3,{size},{size}] tensor in [-1,1], got {type(camera).__name__}")
        if tuple(camera.shape) not in ((1, 3, size, size), (3, size, size)):
            raise InputError(f"camera must be [1,3,{size},{size}] in [-1,1], got {tuple(camera.shape)}")
        if not bool(torch.isfinite(camera).all()):
            raise InputError("camera: the condition image contains NaN or infinite values")
        return camera.reshape(1, 3, size, size).float()

    # --------------------------------------------------------------- back views
    @torch.no_grad()
    def back_views(
        self,
        fronts: Sequence[Any],
        *,
        sampler: SamplerOptions = SamplerOptions(),
        camera: Optional[torch.Tensor] = None,
        crop: str = "center",
        progress: Optional[ProgressCallback] = None,
    ) -> torch.Tensor:
        """Front portraits → backs of the heads ``[B,3,H,W]`` in [-1,1], in ONE batched run.

        Each image's noise comes from (seed, image), so a back view is the same
        whether generated alone or with others. Pose condition: the camera set's
        view nearest 180° unless ``camera`` [1,3,H,W] is given.
        """
        model = self._back_model()
        sampler = sampler.checked()
        crop = check_choice("crop", crop, CROP_MODES)
        if isinstance(fronts, (str, bytes)) or not isinstance(fronts, Sequence) or not fronts:
            raise InputTypeError("fronts must be a non-empty list of images")
        size = model.config.image_size
        x = torch.cat([self._image(f, f"front {i + 1}", size, crop) for i, f in enumerate(fronts)])
        hint = self._back_camera(camera, size)
        tracker = _Progress(progress, sampler.steps)
        return self._generate_backs(x, hint, sampler, tracker.phase("back views", sampler.steps))

    def back_view(self, front, *, seed=SamplerOptions.seed, steps=SamplerOptions.steps, cfg=SamplerOptions.cfg,
                  eta=SamplerOptions.eta, scheduler=SamplerOptions.scheduler, camera=None,
                  crop="center", progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """One front portrait → its back view ``[1,3,H,W]`` in [-1,1] (facts §1, Step 2)."""
        sampler = SamplerOptions(seed, steps, cfg, eta, scheduler)
        return self.back_views([front], sampler=sampler, camera=camera, crop=crop, progress=progress)

    def _generate_backs(self, x_fronts: torch.Tensor, hint: torch.Tensor, sampler: SamplerOptions, hook):
        model = self._back_model()
        self.placement.activate(model)
        device, dtype = model_device_dtype(model)
        batch = x_fronts.shape[0]
        generators = [torch.Generator().manual_seed(mix_seed(sampler.seed, _digest(x))) for x in x_fronts]
        z_front = torch.cat([model.encode(x[None].to(device, dtype), g) for x, g in zip(x_fronts, generators)])
        latent = model.config.latent_size
        x_t = randn_rows((batch, 4, latent, latent), generators).to(device)
        hints = hint.to(device, dtype).expand(batch, -1, -1, -1)
        scheduler = make_scheduler(sampler.scheduler, model.config.schedule, sampler.steps)

        def references_at(t: int) -> FusionCall:
            # one bank row per image: each back view attends to its own front only
            return FusionCall(content=model.appearance(z_front, t, model.text_embedding))

        try:
            z = denoise_views(model, x_t, hints, scheduler, references_at=references_at, generators=generators,
                              guidance=sampler.cfg, eta=sampler.eta, windows=[list(range(batch))],
                              windows_per_batch=1, num_views_per_window=1, on_step=hook)
            return model.decode(z.to(dtype))
        except BaseException:
            z_front = x_t = hints = z = None
            empty_cache(device)
            raise

    # --------------------------------------------------------------- references
    def _read_inputs(self, content, content_back, styles: List[Style], size: int, crop: str):
        """Every image and mask read and checked before the first model runs."""
        x_content = self._image(content, "content", size, crop)
        x_back = self._image(content_back, "content_back", size, crop) if content_back is not None else None
        inputs = []
        for k, spec in enumerate(styles):
            weights = _blend_weights(k, spec)
            fronts = [self._image(img, f"style {k + 1} image {j + 1}", size, crop) for j, img in enumerate(spec.images)]
            if spec.backs is not None and (not isinstance(spec.backs, (list, tuple)) or len(spec.backs) != len(fronts)):
                n = len(spec.backs) if isinstance(spec.backs, (list, tuple)) else type(spec.backs).__name__
                raise InputError(f"style {k + 1}: {n} back views for {len(fronts)} images; give one per image")
            backs = [
                self._image(b, f"style {k + 1} back {j + 1}", size, crop) if b is not None else None
                for j, b in enumerate(spec.backs or [None] * len(fronts))
            ]
            inputs.append(_StyleInput(fronts, backs, weights, self._mask(spec, size, k, crop)))
        if len(inputs) > 1:
            if any(s.mask is None for s in inputs):
                raise InputError("with several styles every style needs a mask (which region gets which style)")
            check_disjoint_masks([s.mask for s in inputs])
        return x_content, x_back, inputs

    @staticmethod
    def _mask(spec: Style, size: int, k: int, crop: str) -> Optional[torch.Tensor]:
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

    def prepare_references(self, content, style=None, *, content_back=None,
                           sampler: SamplerOptions = SamplerOptions(), crop: str = "center",
                           progress: Optional[ProgressCallback] = None) -> References:
        """Read the content and style images, generate missing back views in one batched run, encode all.

        ``style``: None, an image, a :class:`Style` or a list of :class:`Style`
        (see :meth:`stylize`). ``sampler`` drives the back-view run and seeds the
        reference encoding.
        """
        model = self._main_model()
        sampler = sampler.checked()
        crop = check_choice("crop", crop, CROP_MODES)
        inputs = self._read_inputs(content, content_back, _as_style_list(style), model.config.image_size, crop)
        missing = self._fronts_without_backs(*inputs)
        tracker = _Progress(progress, sampler.steps if missing else 0)
        return self._prepare(inputs, sampler, tracker)

    @staticmethod
    def _fronts_without_backs(x_content, x_back, styles) -> List[torch.Tensor]:
        """The front images whose back view must be generated (content first, then styles in order)."""
        return ([x_content] if x_back is None else []) + [f for s in styles for f, b in zip(s.fronts, s.backs)
                                                          if b is None]

    def _prepare(self, inputs, sampler: SamplerOptions, tracker: _Progress) -> References:
        x_content, x_back, styles = inputs
        model = self._main_model()
        todo = self._fronts_without_backs(*inputs)
        generated: List[torch.Tensor] = []
        if todo:
            hint = self._back_camera(None, self.image_size)
            made = self._generate_backs(torch.cat(todo), hint, sampler, tracker.phase("back views", sampler.steps))
            generated = list(made.float().cpu().split(1))
        if x_back is None:
            x_back = generated.pop(0)
        style_backs = [[b if b is not None else generated.pop(0) for b in s.backs] for s in styles]
        self.placement.activate(model)
        device, dtype = model_device_dtype(model)
        seed = sampler.seed
        refs = References(None, [], x_back, style_backs, seed)
        try:
            refs.content = _encode_reference(model, torch.cat([x_content, x_back.to(x_content)]), seed)
            for spec, backs in zip(styles, style_backs):
                latents = [_encode_reference(model, torch.cat([f, b.to(f)]), seed)
                           for f, b in zip(spec.fronts, backs)]
                mask = spec.mask.to(device) if spec.mask is not None else None
                refs.styles.append((latents, spec.weights, mask))
        except BaseException:
            refs.release()
            raise
        return refs

    # --------------------------------------------------------------- denoising
    @torch.no_grad()
    def denoise(self, references: References, cameras: CameraSet, *, fusion: FusionSettings = FusionSettings(),
                sampler: SamplerOptions = SamplerOptions(), windows: WindowOptions = WindowOptions(),
                guide_frames=None, crop: str = "center",
                progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Denoise one latent per camera with the references; returns x_0 ``[N,4,h,w]`` float32."""
        model = self._main_model()
        sampler, fusion = sampler.checked(), fusion.checked()
        windows = windows.checked(*_window_limits(model))
        cams = self._cameras(cameras, None, model.config.image_size)
        guide = self._guide(guide_frames, len(cams), model.config.image_size, crop)
        tracker = _Progress(progress, sampler.steps)
        return self._denoise(references, cams, fusion, sampler, windows, guide, tracker)

    @staticmethod
    def _guide(guide_frames, n: int, size: int, crop: str) -> Optional[torch.Tensor]:
        if guide_frames is None:
            return None
        guide = to_model_tensor(guide_frames, size, name="guide_frames", crop=crop)
        if guide.shape[0] != n:
            raise InputError(f"guide_frames: got {guide.shape[0]} frames for {n} views; give one per view")
        return guide

    def _denoise(self, refs: References, cams: CameraSet, fusion: FusionSettings, sampler: SamplerOptions,
                 win: WindowOptions, guide: Optional[torch.Tensor], tracker: _Progress) -> torch.Tensor:
        if refs.content is None:
            raise InputError("references were released; prepare them again")
        model = self._main_model()
        self.placement.activate(model)
        device, dtype = model_device_dtype(model)
        n = len(cams)
        window, overlap = win.resolved(model.config.temporal.window)
        windows = view_windows(n, window, win.mode, overlap)
        latent = model.config.latent_size
        generator = torch.Generator().manual_seed(sampler.seed)
        noise = torch.randn((n, 4, latent, latent), generator=generator)
        if guide is not None:
            z_guide = _encode_reference(model, guide, sampler.seed).float().cpu()
            noise = guide_frame_noise(z_guide, noise, model.config.schedule)
        style_latents = [lat for latents, _, _ in refs.styles for lat in latents]
        slices = _style_slices(refs)  # no loop variable of this frame holds a reference tensor

        def references_at(t: int) -> FusionCall:
            content_bank, style_banks = model.reference_banks(refs.content, style_latents, t)
            entries = [StyleEntry(banks=style_banks[sl], weights=w, mask=m) for sl, w, m in slices]
            return FusionCall(content_bank, entries, fusion)

        scheduler = make_scheduler(sampler.scheduler, model.config.schedule, sampler.steps)
        hints = cams.images.to(device, dtype)
        try:
            return denoise_views(model, noise.to(device), hints, scheduler, references_at=references_at,
                                 generators=[generator], guidance=sampler.cfg, eta=sampler.eta, windows=windows,
                                 windows_per_batch=win.windows_per_batch, on_step=tracker.phase("turntable",
                                                                                                sampler.steps))
        except BaseException:
            hints = noise = style_latents = slices = None
            empty_cache(device)
            raise

    # --------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, chunk: int = DECODE_CHUNK.default,
               progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Latents → views ``[N,3,H,W]`` in [-1,1], ``chunk`` views at a time to bound VAE memory."""
        chunk = DECODE_CHUNK.check(chunk)
        if not torch.is_tensor(latents) or latents.ndim != 4 or latents.shape[1] != 4:
            raise InputError(f"latents must be [N,4,h,w], got {getattr(latents, 'shape', type(latents).__name__)}")
        tracker = _Progress(progress, math.ceil(latents.shape[0] / chunk))
        return self._decode(latents, chunk, tracker)

    def _decode(self, latents: torch.Tensor, chunk: int, tracker: _Progress) -> torch.Tensor:
        model = self._main_model()
        self.placement.activate(model)
        device, dtype = model_device_dtype(model)
        parts = latents.split(chunk)
        hook = tracker.phase("decode", len(parts))
        out = []
        try:
            for i, part in enumerate(parts):
                out.append(model.decode(part.to(device, dtype), chunk=chunk))
                if hook is not None:
                    hook(i + 1, len(parts), None)
            return torch.cat(out)
        except BaseException:  # a cancel while decoding: this frame must not pin the latents or decoded views
            out = parts = part = latents = None
            empty_cache(device)
            raise

    # --------------------------------------------------------------- stylize
    @torch.no_grad()
    def stylize(
        self,
        content: Any,
        style: Union[Any, Style, Sequence[Style], None] = None,
        *,
        content_back: Any = None,
        views: Optional[int] = None,
        cameras: Optional[CameraSet] = None,
        tau=FusionSettings.tau,
        pairing: Optional[str] = None,
        mask_mode: Optional[str] = None,
        seed: int = SamplerOptions.seed,
        steps: int = SamplerOptions.steps,
        cfg: float = SamplerOptions.cfg,
        eta: float = SamplerOptions.eta,
        scheduler: str = SamplerOptions.scheduler,
        window: Optional[int] = None,
        window_mode: str = WindowOptions.mode,
        overlap: Optional[int] = None,
        windows_per_batch: int = WindowOptions.windows_per_batch,
        guide_frames=None,
        crop: str = "center",
        decode_chunk: int = DECODE_CHUNK.default,
        progress: Optional[ProgressCallback] = None,
    ) -> TurntableResult:
        """Stylized turntable of ``content`` in ``style`` (§3).

        ``style``: an image (one global style), a :class:`Style` (masks, blends),
        a list of :class:`Style` (several regions, several styles; masks must not
        overlap), or None for plain DiffPortrait360 novel views. ``views`` picks
        N evenly spaced cameras of the condition set (default: all); ``cameras``
        gives them explicitly. ``tau`` is the key scale τ (§3.5): a float or a
        per-layer mapping (:class:`~.options.FusionSettings`). ``pairing`` and
        ``mask_mode`` default to what a loaded trained style module was trained with
        (else "paper"). ``mask_mode``:
        "paper" masks keys only, as the paper writes it (style can leak outside
        the mask), "confined" also keeps style values and attention inside it.
        ``window`` views go through the view-consistency modules together
        (default: as trained, 8); ``window_mode`` "independent" (official chunks)
        or "circular" (overlapping windows that close the loop, ``overlap`` views
        shared by neighbours; default half the window). ``scheduler``:
        "ddim" is the official sampler; others are faster, not exact.
        ``guide_frames``: one image per view (renders of the head at the same
        cameras) for the 3D-aware initial noise (facts §3). ``crop``: "center"
        crops non-square images to a square, "none" stretches them like the
        official code. ``progress`` receives a :class:`ProgressEvent` per step.
        """
        model = self._main_model()
        sampler = SamplerOptions(seed, steps, cfg, eta, scheduler).checked()
        fusion = FusionSettings(tau, *self._trained_fusion(model, pairing, mask_mode)).checked()
        win = WindowOptions(window, window_mode, overlap, windows_per_batch).checked(*_window_limits(model))
        crop = check_choice("crop", crop, CROP_MODES)
        chunk = DECODE_CHUNK.check(decode_chunk)
        size = model.config.image_size
        cams = self._cameras(cameras, views, size)
        inputs = self._read_inputs(content, content_back, _as_style_list(style), size, crop)
        guide = self._guide(guide_frames, len(cams), size, crop)
        back_steps = sampler.steps if self._fronts_without_backs(*inputs) else 0
        tracker = _Progress(progress, back_steps + sampler.steps + math.ceil(len(cams) / chunk))
        refs = self._prepare(inputs, sampler, tracker)
        try:
            latents = self._denoise(refs, cams, fusion, sampler, win, guide, tracker)
            views_out = self._decode(latents, chunk, tracker)
            return TurntableResult(views_out, list(cams.yaws_deg), refs.content_back, refs.style_backs)
        except BaseException:
            refs.release()
            latents = None
            raise


__all__ = [
    "DiffStyle360Pipeline",
    "ModelPlacement",
    "ProgressEvent",
    "References",
    "Style",
    "TurntableResult",
    "alpha_weights",
]
