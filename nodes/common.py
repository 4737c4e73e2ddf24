"""What every node shares: the category, socket types, widget specs read from the core's options,
one-sentence user errors, and IMAGE/MASK conversions (host facts §1.5)."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Dict, Iterator, Optional

import torch

from diffstyle360_core import options
from diffstyle360_core.images import to_comfy_image

from . import host

CATEGORY = "DiffStyle360"

# Custom socket types (strings compared by the host; frozen like the node ids).
MODEL = "DS360_MODEL"
CAMERAS = "DS360_CAMERAS"
FUSION = "DS360_FUSION"
STYLE = "DS360_STYLE"
#: The sampler's style input: a plain IMAGE (one global style) or a DS360_STYLE (masks, blends).
IMAGE_OR_STYLE = "IMAGE," + STYLE


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
def _round_step(r: options.NumberRange) -> Dict[str, Any]:
    if r.integer:
        return {"step": 1}
    return {"step": 0.01, "round": 0.001}


def number(r: options.NumberRange, tooltip: str, **extra) -> tuple:
    """An INT/FLOAT widget whose default and bounds come from the core's NumberRange."""
    spec = {"default": r.default, "min": r.low, "max": r.high, **_round_step(r), "tooltip": tooltip}
    spec.update(extra)
    return ("INT" if r.integer else "FLOAT", spec)


def choice(values, tooltip: str, default: Optional[str] = None) -> tuple:
    values = list(values)
    return (values, {"default": default or values[0], "tooltip": tooltip})


SEED_TOOLTIP = "Random seed: the same seed and inputs give the same views."
STEPS_TOOLTIP = "Denoising steps (official sampler: 50 DDIM steps)."
CFG_TOOLTIP = ("Classifier-free guidance: 3 = official; the unconditional pass drops the references and the "
               "pose control; 1 skips it (twice as fast, weaker).")
ETA_TOOLTIP = "DDIM eta, the amount of fresh noise per step (official: 0.5)."
SCHEDULER_TOOLTIP = ("ddim = the official sampler, exact; dpmpp_2m / unipc / euler reach a similar picture in "
                     "fewer steps but are not the official sampler.")
CROP_TOOLTIP = ("center: centre-crop non-square images to a square before resizing; none: squash them like the "
                "official code.")


def sampler_inputs() -> Dict[str, tuple]:
    return {
        "seed": number(options.SEED, SEED_TOOLTIP, control_after_generate=True),
        "steps": number(options.STEPS, STEPS_TOOLTIP),
        "cfg": number(options.CFG, CFG_TOOLTIP),
        "eta": number(options.ETA, ETA_TOOLTIP),
        "scheduler": choice(options.SCHEDULERS, SCHEDULER_TOOLTIP),
    }


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
