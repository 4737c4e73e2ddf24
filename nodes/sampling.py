"""Back-View Generate and Style Fusion Sampler: the nodes that run the models.

Every denoising step (back views first, then the turntable) advances one
ComfyUI progress bar, checks the Cancel button and, when previews are on,
sends a preview of the first view through ComfyUI's ``latent_preview`` with the
SD1.5 latent format (Latent2RGB or TAESD, as the user's preview setting says).
"""

from __future__ import annotations

import torch

from diffstyle360_core import options
from diffstyle360_core.options import FusionSettings

from . import host
from .common import (CROP_TOOLTIP, Cameras, DiffStyle360Error, Fusion, Model, choice, image_or_style, number,
                     sampler_inputs, sampler_options, schema, to_image_output, user_errors)
from .host import io
from .styles import KeyScaleChoice, StyleStack

class ProgressBridge:
    """Core ProgressEvent → host progress bar (+ the host's latent preview), with an interrupt check every step."""

    def __init__(self, total: int):
        self.bar = host.progress_bar(total)
        self.preview = host.latent_previewer()

    def __call__(self, event) -> None:
        host.check_interrupt()
        preview = None
        # the x_0 estimate when the scheduler gives one (what KSampler previews), else the noisy latents
        latents = getattr(event, "denoised", None)
        if latents is None:
            latents = getattr(event, "latents", None)
        if self.preview is not None and latents is not None and latents.ndim == 4 and latents.shape[1] == 4:
            preview = self.preview(latents)
        self.bar.update_absolute(event.overall_step, event.overall_total, preview)


def _fusion_choice(fusion) -> KeyScaleChoice:
    """The sampler's fusion input: Key Scale's choice; none connected = τ 1.05 and the module's pairing/mask mode."""
    if fusion is None:
        return KeyScaleChoice(options.TAU.default)
    if isinstance(fusion, KeyScaleChoice):
        return fusion
    if isinstance(fusion, FusionSettings):  # a core settings object (explicit pairing and mask mode)
        checked = fusion.checked()
        return KeyScaleChoice(checked.tau, checked.pairing, checked.mask_mode)
    raise DiffStyle360Error(f"fusion must come from the Key Scale node, got {type(fusion).__name__}.")


def _frames(image: torch.Tensor):
    """An IMAGE batch as a list of single images (the core takes a sequence of fronts)."""
    if not torch.is_tensor(image) or image.ndim != 4:
        raise DiffStyle360Error(f"expected an IMAGE [B,H,W,C], got {getattr(image, 'shape', type(image).__name__)}.")
    return [image[i:i + 1] for i in range(image.shape[0])]


class BackViewGenerate(io.ComfyNode):
    SEARCH_ALIASES = ["back view", "back of the head", "rear view", "360", "novel view"]

    @classmethod
    def define_schema(cls):
        return schema(
            "DiffStyle360BackViewGenerate", "DiffStyle360 Back-View Generate",
            description=(
                "Generates the back of the head from a front portrait with DiffPortrait360's back-view model, for "
                "each image of the batch (content portraits and style images alike). The sampler does this by itself "
                "when no back image is connected; use this node to see, reuse or mask a back view."),
            inputs=[
                Model.Input("model", tooltip="The weight set (its back-view model is used)."),
                io.Image.Input("image", tooltip="Front view(s): the content portrait or a style image."),
                *sampler_inputs(),
                choice("crop", options.CROP_MODES, CROP_TOOLTIP),
            ],
            outputs=[io.Image.Output("back_view", tooltip="One back view per input image, at the model's resolution.")],
            search_aliases=cls.SEARCH_ALIASES,
        )

    @classmethod
    def execute(cls, model, image, seed, steps, cfg, eta, scheduler, crop="center"):
        with user_errors("Back-View Generate"):
            sampler = sampler_options(seed, steps, cfg, eta, scheduler)
            options.check_choice("crop", crop, options.CROP_MODES)
            fronts = _frames(image)
            pipe = model.pipeline(main=False, back_view=True)
            progress = ProgressBridge(sampler.steps)
            backs = pipe.back_views(fronts, sampler=sampler, crop=crop, progress=progress)
            return io.NodeOutput(to_image_output(backs))


def _core_style(style):
    if style is None:
        return None
    if isinstance(style, StyleStack):
        return style.core()
    if torch.is_tensor(style):
        return style
    raise DiffStyle360Error(f"style must be an IMAGE or a DS360_STYLE, got {type(style).__name__}.")


def _needs_back_model(content_back, style) -> bool:
    if content_back is None:
        return True
    if isinstance(style, StyleStack):
        return any(s.backs is None or any(b is None for b in s.backs) for s in style.styles)
    return torch.is_tensor(style)


class StyleFusionSampler(io.ComfyNode):
    SEARCH_ALIASES = ["style transfer", "sampler", "stylize", "360", "turntable", "novel views", "head"]

    @classmethod
    def define_schema(cls):
        return schema(
            "DiffStyle360StyleFusionSampler", "DiffStyle360 Style Transfer (Style Fusion Sampler)",
            description=(
                "Renders the 360-degree turntable of the content portrait in the style (DiffStyle360, Fig. 2): back "
                "views of content and style are generated when not given, then every camera view is denoised with "
                "Style Fusion Attention. Style: a plain IMAGE (one global style), or a Style Mask / Style Blend "
                "output. With no style connected it renders plain DiffPortrait360 novel views."),
            inputs=[
                Model.Input("model", tooltip="The weight set from Load Appearance Modules."),
                io.Image.Input("content", tooltip="The portrait to turn around (one image; a front view of a head)."),
                Cameras.Input("cameras", tooltip="The views to render, from Turntable Camera."),
                *sampler_inputs(),
                number("window", options.WINDOW, (
                    "Views denoised together by the view-consistency modules (trained with 8; at most 24).")),
                choice("window_mode", options.WINDOW_MODES, (
                    "independent: consecutive chunks of 'window' views (the official 4 x 8 for 32 views); "
                    "circular: overlapping windows that wrap around, so the 360-degree loop closes.")),
                number("overlap", options.OVERLAP, "Views shared by neighbouring circular windows (below window)."),
                number("windows_per_batch", options.WINDOWS_PER_BATCH, (
                    "Windows run in one forward pass; only trades GPU memory for speed (same result). Lower it on "
                    "out-of-memory errors.")),
                choice("crop", options.CROP_MODES, CROP_TOOLTIP),
                number("decode_chunk", options.DECODE_CHUNK, (
                    "Views the VAE decodes at once; lower it if decoding runs out of GPU memory (same result).")),
                image_or_style("style", (
                    "The style: an IMAGE (one global style) or a Style Mask / Style Blend output. Leave empty for "
                    "plain DiffPortrait360 novel views."), optional=True),
                io.Image.Input("content_back", optional=True, tooltip=(
                    "The back of the content head, if you have it; generated by the back-view model otherwise.")),
                Fusion.Input("fusion", optional=True, tooltip=(
                    "Key Scale settings (default: tau 1.05, and the pairing and mask mode the style module was "
                    "trained with; paper when training-free).")),
                io.Image.Input("guide_frames", optional=True, tooltip=(
                    "Optional renders of the head at the same cameras, one per view, to start from 3D-aware noise.")),
            ],
            outputs=[
                io.Image.Output("views", tooltip=(
                    "The turntable as one IMAGE batch in camera order (feeds Save Image, Save Animated WEBP, video "
                    "nodes).")),
                io.Image.Output("back_views", tooltip="The back views used: the content's first, then each style's."),
            ],
            search_aliases=cls.SEARCH_ALIASES,
        )

    @classmethod
    def execute(cls, model, content, cameras, seed, steps, cfg, eta, scheduler, window, window_mode, overlap,
                windows_per_batch, crop="center", decode_chunk=options.DECODE_CHUNK.default, style=None,
                content_back=None, fusion=None, guide_frames=None):
        with user_errors("Style Fusion Sampler"):
            sampler = sampler_options(seed, steps, cfg, eta, scheduler)
            settings = _fusion_choice(fusion)
            pipe = model.pipeline(main=True, back_view=_needs_back_model(content_back, style))
            progress = ProgressBridge(sampler.steps)
            result = pipe.stylize(
                content, _core_style(style), content_back=content_back, cameras=cameras,
                # pairing / mask mode None: as the trained style module was trained (paper when training-free)
                tau=settings.tau, pairing=settings.pairing, mask_mode=settings.mask_mode,
                seed=sampler.seed, steps=sampler.steps, cfg=sampler.cfg, eta=sampler.eta,
                scheduler=sampler.scheduler, window=window, window_mode=window_mode,
                overlap=overlap if window_mode == "circular" else None,  # the widget always has a value
                windows_per_batch=windows_per_batch, guide_frames=guide_frames, crop=crop, decode_chunk=decode_chunk,
                progress=progress,
            )
            backs = [result.content_back] + [b for group in result.style_backs for b in group]
            backs = torch.cat([b.reshape(-1, *b.shape[-3:]) for b in backs])
            return io.NodeOutput(to_image_output(result.views), to_image_output(backs))
