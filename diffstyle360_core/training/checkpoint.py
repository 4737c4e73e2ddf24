"""The trained module file: one safetensors with the appearance module, the view-consistency modules
and the recipe that made them.

``OUT/style_module.safetensors`` (mode ``style_module``) holds

* ``unet.*``: the Style Appearance Module, the same keys as ``appearance.safetensors`` of a converted
  folder and as ``make-tiny``'s ``style_module-tiny.safetensors`` (what ``load_style_module`` reads);
* ``temporal.down.*`` / ``temporal.up.*``: the fine-tuned view-consistency modules, the keys of a
  converted folder's ``temporal.safetensors`` with a ``temporal.`` prefix;
* metadata ``diffstyle360_component`` = ``style_appearance`` and ``diffstyle360_training`` = the JSON
  of :func:`training_info` (mode, pairing, mask_mode, τ, steps, …), also written next to it as
  ``style_module.json``.

Mode ``finetune_appearance`` writes ``OUT/appearance_module.safetensors`` with the same layout and
``diffstyle360_component`` = ``appearance``: its ``unet.*`` replace the shared (content) appearance
module; there is no style module.

:func:`load_trained_module` applies such a file to a loaded model, returning a new model that
shares every frozen part; ``weights.load_style_module`` is meant to do the same for the CLI and nodes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..config import (FORMAT_VERSION, META_TRAINING, TRAINED_COMPONENTS, TRAINED_TEMPORAL_PREFIX, file_metadata,
                      split_trained_state)
from ..files import write_atomic, write_text_atomic
from .config import TrainConfig

FILE_NAMES = {"style_module": "style_module.safetensors", "finetune_appearance": "appearance_module.safetensors"}


def training_info(config: TrainConfig, step: int) -> Dict[str, object]:
    """What inference must know (pairing, mask mode) and how the module was made."""
    return {
        "mode": config.mode,
        "pairing": config.pairing,
        "mask_mode": config.mask_mode,
        "tau_trained": config.tau,
        "steps": int(step),
        "learning_rate": config.learning_rate,
        "views_per_sample": config.views_per_sample,
        "condition_dropout": config.condition_dropout,
        "mixed_precision": config.mixed_precision,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "format_version": FORMAT_VERSION,
    }


def trained_state_dict(model, mode: str) -> Dict[str, torch.Tensor]:
    """``unet.*`` of the trained appearance module + ``temporal.*`` of the view-consistency modules (fp32, CPU)."""
    appearance = model.style_appearance if mode == "style_module" else model.appearance
    out = {k: v.detach().float().cpu().contiguous() for k, v in appearance.state_dict().items()}
    out.update({TRAINED_TEMPORAL_PREFIX + k: v.detach().float().cpu().contiguous()
                for k, v in model.temporal.state_dict().items()})
    return out


def save_trained_module(model, config: TrainConfig, step: int, folder) -> Path:
    """Write the trained module file (+ JSON sidecar) into ``folder`` atomically; returns the file."""
    from safetensors.torch import save_file

    folder = Path(os.fspath(folder))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAMES[config.mode]
    info = training_info(config, step)
    metadata = file_metadata(TRAINED_COMPONENTS[config.mode], training=info)
    state = trained_state_dict(model, config.mode)
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    write_text_atomic(path.with_suffix(".json"), json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


def read_trained_module(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, str]]:
    """(appearance ``unet.*`` state, view-consistency state (prefix stripped, empty if none), metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(os.fspath(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    state = load_file(str(path))
    return split_trained_state(state) + (metadata,)


def training_settings(metadata: Dict[str, str]) -> Dict[str, object]:
    """The ``diffstyle360_training`` JSON of a trained file's metadata ({} for files not made by training)."""
    raw = metadata.get(META_TRAINING)
    return json.loads(raw) if raw else {}


def load_trained_module(model, path, *, component: Optional[str] = None):
    """``model`` with a trained file applied, as a *new* model sharing every frozen part with ``model``.

    The inference loader (:func:`diffstyle360_core.weights.load_style_module`) reads these files as
    they are; this is that loader. ``component`` is accepted for compatibility and must match the file.
    """
    from ..weights import load_style_module

    new = load_style_module(model, path)
    if component is not None:
        kind = "appearance" if new.style_appearance is None else "style_appearance"
        if kind != component:
            raise ValueError(f"{path} holds a {kind} module, not {component}")
    return new.eval()
