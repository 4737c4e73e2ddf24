"""Key Scale, Style Mask and Style Blend: how the style enters Style Fusion Attention (§3.3, §3.5, §4).

A DS360_STYLE link carries a :class:`StyleStack`, a tuple of the core's
``Style`` entries: one per masked region (Style Mask appends to an upstream
stack) or one blended style (Style Blend). A plain IMAGE on the sampler's style
input is one global style and needs none of these nodes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from diffstyle360_core import options
from diffstyle360_core.fusion import alpha_weights, checked_blend_weights
from diffstyle360_core.options import FusionSettings, tau_by_resolution
from diffstyle360_core.pipeline import Style

from .common import (DiffStyle360Error, Fusion, Style as StyleSocket, choice, image_or_style, number, parse_weights,
                     schema, single_mask, user_errors)
from .host import io



@dataclass(frozen=True)
class StyleStack:
    """What flows on a DS360_STYLE link: the core Style entries, in the order they were added."""

    styles: Tuple[Style, ...]

    def core(self):
        """The sampler's ``style`` argument: one Style, or a list of masked Styles."""
        return self.styles[0] if len(self.styles) == 1 else list(self.styles)


# --------------------------------------------------------------------------------------------- Key Scale
#: Key Scale's default pairing / mask mode: what the loaded style module was trained with (paper when training-free).
FROM_MODULE = "from the module"


@dataclass(frozen=True)
class KeyScaleChoice:
    """What flows on a DS360_FUSION link: τ (a float or a per-layer table) and the pairing and mask mode,
    None meaning "as the loaded style module was trained" (the core resolves it; paper when training-free)."""

    tau: object
    pairing: Optional[str] = None
    mask_mode: Optional[str] = None


_LEVELS = (
    ("tau_res64", 0, "64x64 latents (the finest: down_blocks.0, up_blocks.3; fine texture)"),
    ("tau_res32", 1, "32x32 latents (down_blocks.1, up_blocks.2)"),
    ("tau_res16", 2, "16x16 latents (down_blocks.2, up_blocks.1)"),
    ("tau_res8", 3, "8x8 latents (the coarsest: mid_block; overall shape and colour)"),
)


class KeyScale(io.ComfyNode):
    """All of Style Fusion Attention's settings, not only the key scale: τ (§3.5), a τ per latent resolution
    (tau_res64 … tau_res8; 0 keeps τ), the key/value pairing and the style-mask mode, as one FusionSettings."""

    SEARCH_ALIASES = ["style strength", "tau", "style transfer", "360"]

    @classmethod
    def define_schema(cls):
        low, high = options.PAPER_TAU_RANGE
        inputs = [
            number("tau", options.TAU, (
                f"Key scale tau (§3.5): multiplies the style keys before the softmax. >1 = stronger style, less "
                f"identity; <1 = the other way. The paper uses {low:.2f}-{high:.2f} (default {options.TAU.default})."
            )),
            choice("pairing", (FROM_MODULE,) + tuple(options.PAIRINGS), (
                f"{FROM_MODULE}: the pairing the loaded style module was trained with (paper when training-free). "
                "paper: keys [K_l, AdaIN(K_c,K_s), tau*K_s] with values [V_l, V_s, V_c], the paper's equation as "
                "written; aligned: each key with its own value. A trained style module works best with the pairing "
                "it was trained with.")),
            choice("mask_mode", (FROM_MODULE,) + tuple(options.MASK_MODES), (
                f"How a style mask acts. {FROM_MODULE}: as the loaded style module was trained (paper when "
                "training-free). paper: masks the keys only (style can leak outside the mask); confined: outside the "
                "mask the layer is exactly DiffPortrait360's content attention.")),
        ]
        for name, _, where in _LEVELS:
            inputs.append(number(name, options.TAU, (f"tau for the attention layers at {where}; 0 = use tau, else "
                                                     f"{options.TAU.low}-{options.TAU.high}."), default=0.0, min=0.0))
        return schema(
            "DiffStyle360KeyScale", "DiffStyle360 Key Scale",
            description=(
                "Style Fusion Attention settings: the key scale tau (how strongly attention is pulled toward the "
                "style; paper default 1.05, explored 1.00-1.10), optionally a different tau per latent resolution, "
                "the key/value pairing and how style masks act. Pairing and mask mode default to what the loaded "
                "style module was trained with (paper for training-free); pick one to override it. Without this node "
                "the sampler uses tau 1.05 and the module's pairing and mask mode."),
            inputs=inputs,
            outputs=[Fusion.Output("fusion", tooltip="Fusion settings for the Style Fusion Sampler.")],
            search_aliases=cls.SEARCH_ALIASES,
        )

    @classmethod
    def execute(cls, tau, pairing=FROM_MODULE, mask_mode=FROM_MODULE, tau_res64=0.0, tau_res32=0.0, tau_res16=0.0,
                tau_res8=0.0):
        with user_errors("Key Scale"):
            levels = dict(zip((lv for _, lv, _ in _LEVELS), (tau_res64, tau_res32, tau_res16, tau_res8)))
            per_level = {lv: (None if float(v) == 0.0 else v) for lv, v in levels.items()}
            spec = tau_by_resolution(tau, per_level)
            pairing = None if pairing == FROM_MODULE else pairing
            mask_mode = None if mask_mode == FROM_MODULE else mask_mode
            # checked with placeholders for "from the module": τ and any explicit choice fail here, not mid-run
            checked = FusionSettings(tau=spec, pairing=pairing or options.PAIRINGS[0],
                                     mask_mode=mask_mode or options.MASK_MODES[0]).checked()
            return io.NodeOutput(KeyScaleChoice(checked.tau, pairing, mask_mode))


# --------------------------------------------------------------------------------------------- Style Mask
class StyleMask(io.ComfyNode):
    SEARCH_ALIASES = ["local style", "regional style", "mask", "style transfer", "360"]

    @classmethod
    def define_schema(cls):
        return schema(
            "DiffStyle360StyleMask", "DiffStyle360 Style Mask",
            description=(
                "Local stylization (§4): attaches a mask painted on the style image (white = use this style there) "
                "and optionally one for the style's back view. Chain several Style Mask nodes through 'previous' to "
                "give different regions different styles (masks must not overlap). Use ComfyUI's mask nodes (Load "
                "Image's mask, InvertMask, GrowMask, FeatherMask...) to make the masks."),
            inputs=[
                image_or_style("style", "The style image (or a Style Blend output) this mask belongs to."),
                io.Mask.Input("mask", tooltip=(
                    "Where this style applies, drawn on the style image (1 = stylize); same aspect ratio as the "
                    "style image.")),
                io.Mask.Input("back_mask", optional=True, tooltip=(
                    "Mask on the style's back view; without it nothing is stylized from the back of this style.")),
                io.Image.Input("style_back", optional=True, tooltip=(
                    "The style's back view (e.g. from Back-View Generate, so you can paint back_mask on it); "
                    "generated by the back-view model when not connected.")),
                StyleSocket.Input("previous", optional=True,
                                  tooltip="Styles of other regions to keep (chain Style Mask nodes)."),
            ],
            outputs=[StyleSocket.Output("style", tooltip=(
                "The masked style, after the styles of 'previous'; connect to the sampler's style input."))],
            search_aliases=cls.SEARCH_ALIASES,
        )

    @classmethod
    def execute(cls, style, mask, back_mask=None, style_back=None, previous=None):
        with user_errors("Style Mask"):
            front = single_mask(mask, "mask")
            back = single_mask(back_mask, "back_mask") if back_mask is not None else None
            if isinstance(style, StyleStack):
                if len(style.styles) != 1 or style.styles[0].mask is not None:
                    raise DiffStyle360Error(
                        "Style Mask: the style input must be one image or one Style Blend, not an already masked "
                        "style; chain masked styles through 'previous' instead."
                    )
                base = style.styles[0]
                if style_back is not None:
                    if len(base.images) != 1:
                        raise DiffStyle360Error(
                            "Style Mask: style_back works with a single style image, not a blend of several.")
                    base = dataclasses.replace(base, backs=[style_back])
                entry = dataclasses.replace(base, mask=front, back_mask=back)
            elif torch.is_tensor(style):
                entry = Style(images=[style], backs=[style_back] if style_back is not None else None,
                              mask=front, back_mask=back)
            else:
                raise DiffStyle360Error(f"Style Mask: style must be an IMAGE or a style, got {type(style).__name__}.")
            before = previous.styles if isinstance(previous, StyleStack) else ()
            return io.NodeOutput(StyleStack(before + (entry,)))


# --------------------------------------------------------------------------------------------- Style Blend
class StyleBlend(io.ComfyNode):
    SEARCH_ALIASES = ["style interpolation", "mix styles", "blend", "style transfer", "360"]

    @classmethod
    def define_schema(cls):
        return schema(
            "DiffStyle360StyleBlend", "DiffStyle360 Style Blend",
            description=(
                "Style interpolation (§4): the style images are projected separately and their keys and values "
                "blended, K_s = (1-alpha) K_s1 + alpha K_s2. alpha 0 gives style 1, alpha 1 style 2, exactly. For "
                "three or four styles give one weight per style (summing to 1)."),
            inputs=[
                io.Image.Input("style_1", tooltip="First style image (weight 1-alpha)."),
                io.Image.Input("style_2", tooltip="Second style image (weight alpha)."),
                number("alpha", options.ALPHA, "Blend factor: 0 = style_1 only, 1 = style_2 only, 0.5 = halfway."),
                io.Image.Input("style_3", optional=True, tooltip="Optional third style (needs weights)."),
                io.Image.Input("style_4", optional=True, tooltip="Optional fourth style (needs weights)."),
                io.String.Input("weights", default="", optional=True, tooltip=(
                    "One weight per connected style, comma-separated, summing to 1 (e.g. '0.5, 0.3, 0.2'); "
                    "overrides alpha. Leave empty to use alpha with two styles.")),
            ],
            outputs=[StyleSocket.Output("style", tooltip=(
                "The blended style; connect to the sampler's style input (or to a Style Mask)."))],
            search_aliases=cls.SEARCH_ALIASES,
        )

    @classmethod
    def execute(cls, style_1, style_2, alpha, style_3=None, style_4=None, weights=""):
        with user_errors("Style Blend"):
            images = [im for im in (style_1, style_2, style_3, style_4) if im is not None]
            given = parse_weights(weights)
            if given is None:
                if len(images) > 2:
                    raise DiffStyle360Error(
                        f"Style Blend: {len(images)} styles are connected; give one weight per style in 'weights' "
                        "(e.g. '0.5, 0.3, 0.2')."
                    )
                w = list(alpha_weights(options.ALPHA.check(alpha)))
            else:
                w = checked_blend_weights(given, len(images))  # the core's rule; user_errors words it
            return io.NodeOutput(StyleStack((Style(images=images, weights=w),)))
