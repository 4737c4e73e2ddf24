"""Public API: ``back_view()`` and ``stylize()`` (Fig. 2a end to end).

A :class:`DiffStyle360Pipeline` holds the main model (content + style
appearance modules, pose ControlNet, view-consistency modules), the back-view
model and a camera-condition set. Every argument a user can get wrong is
checked here, before any tensor reaches the model, with a message that says
what to do.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

from .attention import StyleEntry
from .cameras import CameraSet, back_view_index, find_condition_folder, load_condition_set, select_views
from .config import BACK_VIEW, MAIN
from .fusion import MASK_MODES, MASK_SUM_TOL, PAIRINGS, alpha_weights
from .images import image_hw, load_mask, to_model_tensor
from .model import DiffStyle360Model
from .sampling import WINDOW_MODES, DDIMSchedule, batch_windows, denoise_views, guide_frame_noise, view_windows

TAU_RANGE = (0.5, 2.0)
DEFAULT_TAU = 1.05  # supplementary §7.1: the paper's default key scale


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
    content_back: torch.Tensor
    style_backs: List[List[torch.Tensor]] = field(default_factory=list)


def _encode_reference(model: DiffStyle360Model, images: torch.Tensor, seed: int) -> torch.Tensor:
    """VAE latents with the posterior sampled as the official code does, seeded by (seed, image).

    Seeding by the image's own bytes keeps a reference's latent fixed wherever it
    sits in the argument list, and keeps the diffusion noise independent of how
    many references there are (so α = 0/1 reproduces a single style exactly).
    """
    digest = zlib.crc32(images.detach().float().cpu().numpy().tobytes())
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + digest) % (2**63))
    return model.encode(images, generator)


def _check_range(name: str, value: float, low: float, high: float, hint: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}. {hint}")
    return value


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return seed


def _check_common(steps: int, guidance: float, eta: float) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValueError(f"steps must be an integer in [1, 1000], got {steps!r} (official: 50)")
    _check_range("cfg", guidance, 0.0, 30.0, "The official sampler uses 3.")
    _check_range("eta", eta, 0.0, 1.0, "The official sampler uses 0.5.")


class DiffStyle360Pipeline:
    def __init__(
        self,
        main: Optional[DiffStyle360Model],
        back_view_model: Optional[DiffStyle360Model] = None,
        cameras: Optional[CameraSet] = None,
    ):
        if main is not None and main.config.kind != MAIN:
            raise ValueError("the main model slot got a back-view model; pass the model_state (main) weights")
        if back_view_model is not None and back_view_model.config.kind != BACK_VIEW:
            raise ValueError("the back-view slot got a main model; pass the back_head weights")
        self.main = main
        self.back_view_model = back_view_model
        self.cameras = cameras

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        weights: Union[str, Path],
        *,
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[torch.dtype] = None,
        style_module: Optional[Union[str, Path]] = None,
        conditions: Optional[Union[str, Path]] = None,
        load_main: bool = True,
        load_back_view: bool = True,
    ) -> "DiffStyle360Pipeline":
        """Load ``weights/main``, ``weights/back_view`` and ``weights/cam_condition`` (see README).

        ``conditions``: a folder of camera-condition images to use instead of the
        one inside ``weights``.
        """
        from .weights import load_model, load_style_module

        root = Path(weights)
        if root.is_file():
            raise ValueError(
                f"--weights/weights {root} is a file; give the folder that holds main/, back_view/ and "
                "cam_condition/ (convert .th files into it first, README, Weights)"
            )
        if not root.is_dir():
            raise FileNotFoundError(
                f"weights folder {root} does not exist. Convert the official checkpoints with "
                "`python -m diffstyle360_core convert` (README, Weights) or make a demo set with `make-tiny`."
            )

        if (root / "config.json").is_file():
            raise FileNotFoundError(
                f"{root} is a single converted model folder; pass its parent, the folder that holds "
                "main/, back_view/ and cam_condition/ (README, Weights)"
            )

        def _load(kind: str) -> DiffStyle360Model:
            folder = root / kind
            if not (folder / "config.json").is_file():
                originals = sorted(p.name for p in root.glob("*.th"))
                hint = (
                    f" Found {originals}: convert them first with `python -m diffstyle360_core convert "
                    f"--checkpoint FILE --out {folder}`." if originals else ""
                )
                raise FileNotFoundError(f"no converted {kind} model at {folder} (config.json missing).{hint}")
            return load_model(folder, device=device, dtype=dtype)

        main = _load(MAIN) if load_main else None
        if main is not None and style_module is not None:
            load_style_module(main, style_module)
        back = _load(BACK_VIEW) if load_back_view else None
        size = (main or back).config.image_size
        cameras = load_condition_set(Path(conditions) if conditions else find_condition_folder(root), size)
        return cls(main, back, cameras)

    @property
    def image_size(self) -> int:
        return (self.main or self.back_view_model).config.image_size

    def _image(self, image, name: str, model: DiffStyle360Model) -> torch.Tensor:
        x = to_model_tensor(image, model.config.image_size, name=name)
        if x.shape[0] != 1:
            raise ValueError(f"{name}: expected one image, got a batch of {x.shape[0]}; pick one image")
        return x.to(model.vae.device, model.vae.dtype)

    def _cameras(self, cameras: Optional[CameraSet]) -> CameraSet:
        cams = cameras if cameras is not None else self.cameras
        if cams is None:
            raise ValueError("no camera conditions: load a condition set (cam_condition/sphere32) or pass cameras")
        return cams

    # --------------------------------------------------------------- back view
    @torch.no_grad()
    def back_view(
        self,
        front: Any,
        *,
        seed: int = 42,
        steps: int = 50,
        cfg: float = 3.0,
        eta: float = 0.5,
        camera: Optional[torch.Tensor] = None,
        callback: Optional[Callable[[int, int], None]] = None,
    ) -> torch.Tensor:
        """Front portrait → back-of-head image [1,3,H,W] in [-1,1] (facts §1, Step 2).

        Pose condition: the back view of the camera set (yaw closest to 180°,
        frame 16 of sphere32) unless ``camera`` [1,3,H,W] is given.
        """
        model = self._back_model()
        _check_common(steps, cfg, eta)
        _check_seed(seed)
        return self._generate_back(self._image(front, "front", model), seed, steps, cfg, eta, camera, callback)

    def _back_model(self) -> DiffStyle360Model:
        if self.back_view_model is None:
            raise ValueError("no back-view model loaded (weights/back_view); supply the back view yourself")
        return self.back_view_model

    def _generate_back(self, x_front, seed, steps, cfg, eta, camera=None, callback=None) -> torch.Tensor:
        """Back view for a front image already in model layout [1,3,H,W] in [-1,1]."""
        model = self._back_model()
        x_front = x_front.to(model.vae.device, model.vae.dtype)
        if camera is None:
            cams = self._cameras(None)
            camera = cams.images[back_view_index(cams)][None]
        hint = camera.to(model.vae.device, model.vae.dtype)
        generator = torch.Generator().manual_seed(int(seed))
        z_front = model.encode(x_front, generator)
        schedule = DDIMSchedule.make(model.config.schedule, steps, eta)
        shape = (1, 4, model.config.latent_size, model.config.latent_size)
        x_t = torch.randn(shape, generator=generator).to(z_front)

        def set_refs(t: int) -> None:
            content, _ = model.reference_banks(z_front, [], t)
            model.fusion.set_references(content)

        try:
            z = denoise_views(
                model, x_t, hint, schedule, set_references=set_refs, generator=generator, guidance=cfg,
                callback=callback,
            )
        finally:
            model.fusion.clear()
        return model.decode(z)

    # --------------------------------------------------------------- stylize
    @torch.no_grad()
    def stylize(
        self,
        content: Any,
        style: Union[Any, Style, Sequence[Style], None],
        *,
        content_back: Any = None,
        views: Optional[int] = 32,
        cameras: Optional[CameraSet] = None,
        tau: float = DEFAULT_TAU,
        pairing: str = "paper",
        mask_mode: str = "paper",
        seed: int = 42,
        steps: int = 50,
        cfg: float = 3.0,
        eta: float = 0.5,
        window: Optional[int] = None,
        window_mode: str = "independent",
        overlap: int = 4,
        windows_per_batch: int = 4,
        guide_frames: Optional[torch.Tensor] = None,
        callback: Optional[Callable[[int, int], None]] = None,
    ) -> TurntableResult:
        """Stylized turntable of ``content`` in ``style`` (§3).

        ``style``: an image (one global style), a :class:`Style` (masks, blends)
        or a list of :class:`Style` (several regions, several styles; masks must
        not overlap), or None for plain DiffPortrait360 novel views. ``views``
        picks N evenly spaced cameras of the condition set; ``cameras`` gives
        them explicitly. ``tau`` is the key scale τ (§3.5). ``mask_mode``:
        "paper" masks keys only, as the paper writes it (style can leak outside
        the mask), "confined" also keeps style values and attention inside it. ``window`` views go
        through the view-consistency modules together (default: as trained, 8);
        ``window_mode`` "independent" (official chunks) or "circular" (overlapping
        windows that close the loop). ``guide_frames``: one image per view (e.g. a
        ComfyUI IMAGE batch [N,H,W,3] in 0..1; renders of the head at the same
        cameras) for the 3D-aware initial noise (facts §3).
        """
        model = self.main
        if model is None:
            raise ValueError("no main model loaded (weights/main)")
        _check_common(steps, cfg, eta)
        _check_seed(seed)
        tau = _check_range("tau", tau, *TAU_RANGE, f"The paper uses 1.00–1.10 (default {DEFAULT_TAU}).")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {window_mode!r}")
        temporal = model.config.temporal
        if window is not None and (isinstance(window, bool) or int(window) != window):
            raise ValueError(f"window must be a whole number of views, got {window!r}")
        window = temporal.window if window is None else int(window)
        if not 1 <= window <= temporal.max_views:
            raise ValueError(
                f"window must be in [1, {temporal.max_views}] (the view-consistency modules encode at most "
                f"{temporal.max_views} positions; trained with {temporal.window}), got {window}"
            )
        cams = self._cameras(cameras)
        if cameras is None and views is not None:
            cams = select_views(cams, views=views)
        if cams.size != model.config.image_size:
            raise ValueError(
                f"camera conditions are {cams.size}px but the model works at {model.config.image_size}px; "
                f"load them with load_condition_set(folder, {model.config.image_size})"
            )
        n = len(cams)
        windows = view_windows(n, window, window_mode, overlap)
        batch_windows(windows, windows_per_batch)  # validates windows_per_batch
        styles = self._styles(style)
        masks = [self._mask(spec, model, k) for k, spec in enumerate(styles)]
        if len(styles) > 1:
            self._check_disjoint(masks)

        # Read and check every image before the first (long) back-view run.
        x_content = self._image(content, "content", model)
        x_content_back = self._image(content_back, "content_back", model) if content_back is not None else None
        style_images = []
        for k, spec in enumerate(styles):
            fronts = [self._image(img, f"style {k + 1} image {j + 1}", model) for j, img in enumerate(spec.images)]
            backs = [
                self._image(b, f"style {k + 1} back {j + 1}", model) if b is not None else None
                for j, b in enumerate(spec.backs or [None] * len(fronts))
            ]
            style_images.append((fronts, backs))
        guide = None
        if guide_frames is not None:
            guide = to_model_tensor(guide_frames, model.config.image_size, name="guide_frames")
            if guide.shape[0] != n:
                raise ValueError(f"guide_frames: got {guide.shape[0]} frames for {n} views; give one per view")

        device, dtype = model.vae.device, model.vae.dtype
        generator = torch.Generator().manual_seed(int(seed))
        back_content = (
            x_content_back
            if x_content_back is not None
            else self._generate_back(x_content, seed, steps, cfg, eta, callback=callback)
        )
        z_content = _encode_reference(model, torch.cat([x_content, back_content]), seed)

        style_latents: List[torch.Tensor] = []
        entries: List[Tuple[Style, slice]] = []
        style_backs: List[List[torch.Tensor]] = []
        for spec, (fronts, backs) in zip(styles, style_images):
            backs = [
                b if b is not None else self._generate_back(f, seed, steps, cfg, eta, callback=callback)
                for f, b in zip(fronts, backs)
            ]
            style_backs.append(backs)
            start = len(style_latents)
            for f, b in zip(fronts, backs):
                style_latents.append(_encode_reference(model, torch.cat([f, b]), seed))
            entries.append((spec, slice(start, len(style_latents))))
        hints = cams.images.to(device, dtype)
        shape = (n, 4, model.config.latent_size, model.config.latent_size)
        noise = torch.randn(shape, generator=generator).to(device, dtype)
        if guide is not None:
            z_guide = _encode_reference(model, guide.to(device, dtype), seed)
            noise = guide_frame_noise(z_guide, noise, model.config.schedule)

        model.fusion.tau = tau
        model.fusion.pairing = pairing
        model.fusion.mask_mode = mask_mode

        def set_refs(t: int) -> None:
            content_bank, style_banks = model.reference_banks(z_content, style_latents, t)
            model.fusion.set_references(
                content_bank,
                [
                    StyleEntry(banks=style_banks[sl], weights=spec.weights, mask=mask)
                    for (spec, sl), mask in zip(entries, masks)
                ],
            )

        schedule = DDIMSchedule.make(model.config.schedule, steps, eta)
        try:
            z = denoise_views(
                model, noise, hints, schedule, set_references=set_refs, generator=generator, guidance=cfg,
                windows=windows, windows_per_batch=windows_per_batch, callback=callback,
            )
        except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
            raise MemoryError(
                f"out of GPU memory denoising {n} views ({windows_per_batch} windows of {window} per batch): "
                "lower windows_per_batch, then window, or run in float16"
            ) from err
        finally:
            model.fusion.clear()
        return TurntableResult(model.decode(z), list(cams.yaws_deg), back_content, style_backs)

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _styles(style) -> List[Style]:
        if style is None:
            return []
        if isinstance(style, Style):
            styles = [style]
        elif isinstance(style, (list, tuple)) and style and all(isinstance(s, Style) for s in style):
            styles = list(style)
        else:
            styles = [Style(images=[style])]
        for k, spec in enumerate(styles):
            if not spec.images:
                raise ValueError(f"style {k + 1}: no style image given")
            if spec.weights is not None:
                if len(spec.weights) != len(spec.images):
                    raise ValueError(
                        f"style {k + 1}: {len(spec.weights)} blend weights for {len(spec.images)} images"
                    )
                weights = [float(w) for w in spec.weights]
                if not all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in weights) or abs(sum(weights) - 1) > 1e-4:
                    raise ValueError(
                        f"style {k + 1}: blend weights must each be in [0, 1] and sum to 1, got {weights} "
                        "(for two styles use alpha_weights(α))"
                    )
            elif len(spec.images) > 1:
                raise ValueError(f"style {k + 1}: several images need blend weights (e.g. alpha_weights(0.5))")
            if spec.backs is not None and len(spec.backs) != len(spec.images):
                raise ValueError(f"style {k + 1}: {len(spec.backs)} back views for {len(spec.images)} images")
        return styles

    @staticmethod
    def _mask(spec: Style, model: DiffStyle360Model, k: int) -> Optional[torch.Tensor]:
        if spec.mask is None:
            if spec.back_mask is not None:
                raise ValueError(f"style {k + 1}: back_mask given without a front mask")
            return None
        size = model.config.image_size
        hw = image_hw(spec.images[0], name=f"style {k + 1} image 1")
        front = load_mask(spec.mask, size, name=f"style {k + 1} mask", match_hw=hw)[0, 0]
        back_hw = image_hw(spec.backs[0], name=f"style {k + 1} back 1") if spec.backs and spec.backs[0] is not None else None
        back = (
            load_mask(spec.back_mask, size, name=f"style {k + 1} back_mask", match_hw=back_hw)[0, 0]
            if spec.back_mask is not None
            else torch.zeros_like(front)
        )
        return torch.stack([front, back]).to(model.vae.device)

    @staticmethod
    def _check_disjoint(masks: List[Optional[torch.Tensor]]) -> None:
        if any(m is None for m in masks):
            raise ValueError("with several styles every style needs a mask (which region gets which style)")
        total = torch.stack(masks).sum(0)
        if float(total.max()) > 1.0 + MASK_SUM_TOL:  # the same tolerance the fusion layers apply
            raise ValueError(
                "style masks overlap: each pixel may belong to one style at most (sum of masks <= 1); "
                "erase the shared region from one of the masks"
            )


__all__ = ["DiffStyle360Pipeline", "Style", "TurntableResult", "alpha_weights"]
