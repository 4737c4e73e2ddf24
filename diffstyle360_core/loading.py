"""Load the parts of a weight set separately: main model, back-view model, camera-condition set.

A weight set is a folder with ``main/``, ``back_view/`` and ``cam_condition/`` (README,
Weights). A host (ComfyUI) loads each part once, when a node first needs it, on the
device and in the dtype it chooses; the CLI and ``from_pretrained`` compose them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from .cameras import CameraSet, find_condition_folder, load_condition_set
from .config import BACK_VIEW, CONFIG_NAME, MAIN, BackboneConfig
from .devices import resolve_device, resolve_dtype
from .options import InputError, InputTypeError

PathLike = Union[str, os.PathLike]


def weight_set_root(weights: PathLike) -> Path:
    """The weight-set folder, or an error that says what to give instead."""
    if weights is None or not isinstance(weights, (str, os.PathLike)):
        raise InputTypeError(f"weights must be the path of a weight-set folder, got {weights!r:.60}")
    root = Path(os.fspath(weights)).expanduser()
    if root.is_file():
        raise InputError(
            f"weights {root} is a file; give the folder that holds main/, back_view/ and cam_condition/ "
            "(convert the .th files into it first, README, Weights)"
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"weights folder {root} does not exist. Convert the official checkpoints with "
            "`python -m diffstyle360_core convert` (README, Weights) or make a demo set with `make-tiny`."
        )
    if (root / CONFIG_NAME).is_file():
        raise InputError(
            f"{root} is a single converted model folder; give its parent, the folder that holds "
            "main/, back_view/ and cam_condition/ (README, Weights)"
        )
    return root


def model_folder(weights: PathLike, kind: str) -> Path:
    """``weights/main`` or ``weights/back_view``, checked to hold a converted model."""
    root = weight_set_root(weights)
    folder = root / kind
    if not (folder / CONFIG_NAME).is_file():
        originals = sorted(p.name for p in root.glob("*.th"))
        hint = (
            f" Found {originals}: convert them into {folder} first (convert_checkpoint, or the `convert` "
            "command; README, Weights)." if originals else ""
        )
        raise FileNotFoundError(f"no converted {kind} model at {folder} (config.json missing).{hint}")
    return folder


def read_config(weights: PathLike, kind: str = MAIN) -> BackboneConfig:
    """The model config of a weight set without loading any weights (cheap checks before a long load)."""
    return BackboneConfig.load(model_folder(weights, kind))


def _load(weights: PathLike, kind: str, device, dtype, style_module=None):
    from .weights import load_model

    folder = model_folder(weights, kind)
    dev = resolve_device(device)
    return load_model(folder, device=dev, dtype=resolve_dtype(dtype, dev), style_module=style_module)


def load_main(weights: PathLike, *, device=None, dtype=None, style_module: Optional[PathLike] = None):
    """The main model (content/style appearance modules, pose ControlNet, view-consistency modules)."""
    return _load(weights, MAIN, device, dtype, style_module)


def load_back_view(weights: PathLike, *, device=None, dtype=None):
    """The back-view model (generates the back of a head from its front)."""
    return _load(weights, BACK_VIEW, device, dtype)


def load_cameras(weights: Optional[PathLike], size: int, *, conditions: Optional[PathLike] = None) -> CameraSet:
    """The camera-condition set: ``conditions`` if given, else the one inside the weight set."""
    if conditions is not None:
        return load_condition_set(Path(os.fspath(conditions)), size)
    return load_condition_set(find_condition_folder(weight_set_root(weights)), size)


def model_device_dtype(model: torch.nn.Module):
    """Where a model computes: the device a host placed it on (``compute_device``; ComfyUI may leave some
    layers on the CPU and cast them per call), else its VAE's; and the dtype of its VAE (every part shares it)."""
    return getattr(model, "compute_device", None) or model.vae.device, model.vae.dtype
