"""Public API: back views and stylized turntables (Fig. 2a end to end).

A :class:`DiffStyle360Pipeline` holds the main model (content + style appearance
modules, pose ControlNet, view-consistency modules), the back-view model and a
camera-condition set. :meth:`~DiffStyle360Pipeline.stylize` is made of steps a
host can also call one by one: :meth:`~DiffStyle360Pipeline.prepare_references`
(back views + encoding), :meth:`~DiffStyle360Pipeline.denoise` and
:meth:`~DiffStyle360Pipeline.decode`. Every argument is checked by
:mod:`.inputs` and :mod:`.options` before the first model runs, so this file is
the method itself; per-call settings are passed per call, so the models are left
exactly as they were.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import inputs, loading
from .attention import FusionCall, StyleEntry
from .cameras import CameraSet
from .devices import empty_cache
from .fusion import alpha_weights
from .inputs import Style, TurntableInputs
from .loading import model_device_dtype
from .model import DiffStyle360Model
from .options import CROP_MODES, DECODE_CHUNK, FusionSettings, InputError, SamplerOptions, WindowOptions, check_choice
from .sampling import denoise_views, guide_frame_noise, make_scheduler, mix_seed, randn_rows, view_windows


# --------------------------------------------------------------------------- #
# results and hooks
# --------------------------------------------------------------------------- #
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
        self.callback, self.total, self.done = inputs.progress_callback(callback), total, 0

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


def _encode_reference(model: DiffStyle360Model, images: torch.Tensor, seed: int,
                      identity: Optional[torch.Tensor] = None) -> torch.Tensor:
    """VAE latents with the posterior sampled as the official code does, seeded by (seed, identity).

    ``identity`` (default: ``images``) is what the sample's seed is hashed from: the
    user's own image (the front of a front/back pair), never a generated back view.
    Seeding by the image's bytes keeps a reference's latent fixed wherever it sits in
    the argument list and keeps the diffusion noise independent of how many references
    there are (so α = 0/1 reproduces a single style exactly). Hashing only given images
    keeps the seed off the model's own rounding: a back view that differs by 1e-6 on
    another CPU must change the turntable by about as much, not draw other noise.
    """
    key = _digest(images if identity is None else identity)
    generator = torch.Generator().manual_seed(mix_seed(seed, key))  # CPU images: no device sync
    device, dtype = model_device_dtype(model)
    return model.encode(images.to(device, dtype), generator)


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
        inputs.check_models(main, back_view_model, cameras)
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

    def _main_model(self) -> DiffStyle360Model:
        if self.main is None:
            raise InputError("no main model loaded (weights/main); load the weight set's main model")
        return self.main

    def _back_model(self) -> DiffStyle360Model:
        if self.back_view_model is None:
            raise InputError("no back-view model loaded (weights/back_view); load it or supply the back views")
        return self.back_view_model

    @staticmethod
    def _fusion(model: DiffStyle360Model, tau, pairing: Optional[str], mask_mode: Optional[str]) -> FusionSettings:
        """τ checked against the model's layers; pairing and mask mode as given, else as a trained style module
        was trained (:func:`~.weights.read_style_module_file` checked them), else the paper's."""
        trained = getattr(model, "style_module_settings", None) or {}
        return FusionSettings(tau, pairing if pairing is not None else trained.get("pairing", FusionSettings.pairing),
                              mask_mode if mask_mode is not None else trained.get("mask_mode", FusionSettings.mask_mode)
                              ).checked(layers=model.attention_layers)

    # --------------------------------------------------------------- back views
    @torch.no_grad()
    def back_views(self, fronts: Sequence[Any], *, sampler: SamplerOptions = SamplerOptions(),
                   camera: Optional[torch.Tensor] = None, crop: str = "center",
                   progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Front portraits → backs of the heads ``[B,3,H,W]`` in [-1,1], in ONE batched run.

        Each image's noise comes from (seed, image), so a back view is the same
        whether generated alone or with others. Pose condition: the camera set's
        view nearest 180° unless ``camera`` [1,3,H,W] is given.
        """
        model = self._back_model()
        sampler = sampler.checked()
        crop = check_choice("crop", crop, CROP_MODES)
        size = model.config.image_size
        x = inputs.front_images(fronts, size, crop)
        hint = inputs.back_camera(camera, self.cameras, size)
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
            return inputs.finite_output(model.decode(z.to(dtype)), "back views")
        except BaseException:
            z_front = x_t = hints = z = None
            empty_cache(device)
            raise

    # --------------------------------------------------------------- references
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
        given = inputs.read_turntable(content, content_back, style, model.config.image_size, crop)
        tracker = _Progress(progress, sampler.steps if given.fronts_without_backs() else 0)
        return self._prepare(given, sampler, tracker)

    def _prepare(self, given: TurntableInputs, sampler: SamplerOptions, tracker: _Progress) -> References:
        model = self._main_model()
        todo = given.fronts_without_backs()
        generated: List[torch.Tensor] = []
        if todo:
            hint = inputs.back_camera(None, self.cameras, self.image_size)
            made = self._generate_backs(torch.cat(todo), hint, sampler, tracker.phase("back views", sampler.steps))
            generated = list(made.float().cpu().split(1))
        x_content = given.content
        x_back = given.content_back if given.content_back is not None else generated.pop(0)
        style_backs = [[b if b is not None else generated.pop(0) for b in s.backs] for s in given.styles]
        self.placement.activate(model)
        device, dtype = model_device_dtype(model)
        seed = sampler.seed
        refs = References(None, [], x_back, style_backs, seed)
        try:
            refs.content = _encode_reference(model, torch.cat([x_content, x_back.to(x_content)]), seed, x_content)
            for spec, backs in zip(given.styles, style_backs):
                latents = [_encode_reference(model, torch.cat([f, b.to(f)]), seed, f)
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
        sampler, fusion = sampler.checked(), fusion.checked(layers=model.attention_layers)
        windows = windows.checked(*_window_limits(model))
        cams = inputs.camera_set(cameras, None, None, model.config.image_size)
        guide = inputs.guide_frames(guide_frames, len(cams), model.config.image_size, crop)
        tracker = _Progress(progress, sampler.steps)
        return self._denoise(references, cams, fusion, sampler, windows, guide, tracker)

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
        latents = inputs.latents(latents)
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
            return inputs.finite_output(torch.cat(out), "views")
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
        gives them explicitly (not both). ``tau`` is the key scale τ (§3.5): a
        float or a per-layer mapping (:class:`~.options.FusionSettings`; a key
        that names no layer is refused). ``pairing`` and
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
        fusion = self._fusion(model, tau, pairing, mask_mode)
        win = WindowOptions(window, window_mode, overlap, windows_per_batch).checked(*_window_limits(model))
        crop = check_choice("crop", crop, CROP_MODES)
        chunk = DECODE_CHUNK.check(decode_chunk)
        size = model.config.image_size
        cams = inputs.camera_set(cameras, self.cameras, views, size)
        given = inputs.read_turntable(content, content_back, style, size, crop)
        guide = inputs.guide_frames(guide_frames, len(cams), size, crop)
        back_steps = sampler.steps if given.fronts_without_backs() else 0
        tracker = _Progress(progress, back_steps + sampler.steps + math.ceil(len(cams) / chunk))
        refs = self._prepare(given, sampler, tracker)
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
