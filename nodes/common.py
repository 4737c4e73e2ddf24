"""What every node shares: the category, socket types, V3 input declarations read from the core's
options, one-sentence user errors, and IMAGE/MASK conversions (host facts §1.5)."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, List, Optional

import torch

from diffstyle360_core import options
from diffstyle360_core.images import to_comfy_image

from . import host
from .host import io

CATEGORY = "DiffStyle360"

# Custom socket types (strings compared by the host; frozen like the node ids).
MODEL = "DS360_MODEL"
CAMERAS = "DS360_CAMERAS"
FUSION = "DS360_FUSION"
STYLE = "DS360_STYLE"
#: The sampler's style input: a plain IMAGE (one global style) or a DS360_STYLE (masks, blends).
IMAGE_OR_STYLE = "IMAGE," + STYLE

Model = io.Custom(MODEL)
Cameras = io.Custom(CAMERAS)
Fusion = io.Custom(FUSION)
Style = io.Custom(STYLE)


def image_or_style(id: str, tooltip: str, optional: bool = False):
    """An input that takes a plain IMAGE or a DS360_STYLE (sent to the frontend as ``IMAGE,DS360_STYLE``)."""
    return io.MultiType.Input(id, [io.Image, Style], tooltip=tooltip, optional=optional)


class DiffStyle360Error(Exception):
    """A problem the user can fix; the message is one sentence saying what to do (shown in the UI)."""

    # ComfyUI shows "<module>.<class>: <message>"; inside ComfyUI our module name is a file path.
    __module__ = "diffstyle360"


def one_sentence(message: str) -> str:
    """Collapse a core message (which may list paths on several lines) into one line."""
    text = " ".join(str(message).split())
    return text if not text or text[-1] in ".!?)" else text + "."


@contextlib.contextmanager
def user_errors(node: str) -> Iterator[None]:
    """Turn the core's user-fixable errors into one clear sentence for the UI.

    Out-of-memory and the host's interrupt pass through unchanged (ComfyUI
    handles both: it frees models on OOM and reports a cancelled run).
    """
    try:
        yield
    except (host.OOM_EXCEPTION, host.InterruptProcessingException, DiffStyle360Error):
        raise
    except (ValueError, OSError) as err:  # InputError, ImageInputError, WeightMismatchError, FileNotFoundError …
        raise DiffStyle360Error(f"{node}: {one_sentence(err)}") from err


# --------------------------------------------------------------------------------------------- widgets
def number(id: str, r: options.NumberRange, tooltip: str, **extra):
    """An INT/FLOAT widget whose default and bounds come from the core's NumberRange."""
    if r.integer:
        spec = {"default": r.default, "min": r.low, "max": r.high, "step": 1}
        spec.update(extra)
        return io.Int.Input(id, tooltip=tooltip, **spec)
    spec = {"default": r.default, "min": r.low, "max": r.high, "step": 0.01, "round": 0.001}
    spec.update(extra)
    return io.Float.Input(id, tooltip=tooltip, **spec)


def choice(id: str, values, tooltip: str, default: Optional[str] = None, optional: bool = False):
    """A combo widget; the first value is the default unless one is given."""
    values = list(values)
    return io.Combo.Input(id, options=values, default=default or values[0], tooltip=tooltip, optional=optional)


SEED_TOOLTIP = "Random seed: the same seed and inputs give the same views."
STEPS_TOOLTIP = "Denoising steps (official sampler: 50 DDIM steps)."
CFG_TOOLTIP = ("Classifier-free guidance: 3 = official; the unconditional pass drops the references and the "
               "pose control; 1 skips it (twice as fast, weaker).")
ETA_TOOLTIP = "DDIM eta, the amount of fresh noise per step (official: 0.5)."
SCHEDULER_TOOLTIP = ("ddim = the official sampler, exact; dpmpp_2m / unipc / euler reach a similar picture in "
                     "fewer steps but are not the official sampler.")
CROP_TOOLTIP = ("center: centre-crop non-square images to a square before resizing; none: squash them like the "
                "official code.")


def sampler_inputs() -> List[Any]:
    return [
        number("seed", options.SEED, SEED_TOOLTIP, control_after_generate=True),
        number("steps", options.STEPS, STEPS_TOOLTIP),
        number("cfg", options.CFG, CFG_TOOLTIP),
        number("eta", options.ETA, ETA_TOOLTIP),
        choice("scheduler", options.SCHEDULERS, SCHEDULER_TOOLTIP),
    ]


def sampler_options(seed, steps, cfg, eta, scheduler) -> options.SamplerOptions:
    return options.SamplerOptions(seed=seed, steps=steps, cfg=cfg, eta=eta, scheduler=scheduler).checked()


# --------------------------------------------------------------------------------------------- tensors
def to_image_output(views: torch.Tensor) -> torch.Tensor:
    """Core views [N,3,H,W] in [-1,1] → ComfyUI IMAGE [N,H,W,3] float32 0..1 on the intermediate device."""
    return to_comfy_image(views).to(host.intermediate_device(), torch.float32)


def single_mask(mask: Any, name: str) -> torch.Tensor:
    """A ComfyUI MASK [B,H,W] (or [H,W]) holding one mask → [H,W]."""
    if not torch.is_tensor(mask):
        raise DiffStyle360Error(f"{name}: expected a MASK, got {type(mask).__name__}.")
    if mask.ndim == 2:
        return mask
    if mask.ndim == 3 and mask.shape[0] == 1:
        return mask[0]
    if mask.ndim == 3:
        raise DiffStyle360Error(
            f"{name}: got a batch of {mask.shape[0]} masks; connect one mask (use one Style Mask node per region)."
        )
    raise DiffStyle360Error(f"{name}: expected a MASK of shape [B,H,W] or [H,W], got {list(mask.shape)}.")


def parse_weights(text: str) -> Optional[list]:
    """ "0.5, 0.3, 0.2" → [0.5, 0.3, 0.2]; an empty string → None."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p for p in re.split(r"[,\s;]+", text) if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise DiffStyle360Error(
            f"Style Blend: weights must be numbers separated by commas (e.g. '0.5, 0.3, 0.2'), got {text!r}."
        ) from None


# --------------------------------------------------------------------------------------------- schema
def schema(node_id: str, display_name: str, description: str, inputs: list, outputs: list,
           search_aliases=()) -> Any:
    """The ``io.Schema`` of one of our nodes, in our category. ``search_aliases`` (words the node search
    matches) is passed only to hosts whose Schema has that field (newer than ComfyUI 0.8)."""
    extra = {}
    if search_aliases and "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {}):
        extra["search_aliases"] = list(search_aliases)
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                     inputs=inputs, outputs=outputs, **extra)
