"""Our model's weight layout: every component's keys and shapes for a config.

Read off the real modules (:class:`~.model.DiffStyle360Model` and
transformers' ``CLIPTextModel``) built on the meta device, so it costs no
memory and can never drift from the model code. :mod:`.weights` checks files
against it; :mod:`.official_keys` (names only) sits below this module and
never builds a model.
"""

from __future__ import annotations

import functools
import json
from typing import Dict

import torch

from .config import MODULE_COMPONENTS, TEXT_EMBEDDING, BackboneConfig
from .official_keys import TEXT_ENCODER, canonical_clip_key

__all__ = ["expected_shapes", "folder_shapes"]

Shapes = Dict[str, Dict[str, torch.Size]]


@functools.lru_cache(maxsize=8)
def _expected_shapes_cached(config_json: str) -> Shapes:
    from transformers import CLIPTextConfig, CLIPTextModel

    from .model import DiffStyle360Model

    config = BackboneConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = DiffStyle360Model(config)
        clip = CLIPTextModel(CLIPTextConfig(**config.text_encoder))
    out: Shapes = {}
    for comp in MODULE_COMPONENTS:
        module = getattr(model, comp, None)
        if module is not None:
            out[comp] = {k: v.shape for k, v in module.state_dict().items()}
    out[TEXT_ENCODER] = {canonical_clip_key(k): v.shape for k, v in clip.state_dict().items()}
    out[TEXT_EMBEDDING] = {TEXT_EMBEDDING: getattr(model, TEXT_EMBEDDING).shape}
    return out


def expected_shapes(config: BackboneConfig) -> Shapes:
    """``{component: {key: shape}}`` of our model for ``config`` (built on the meta device, no memory).

    Components: ``unet``, ``temporal`` (main only), ``appearance``,
    ``pose_controlnet``, ``vae``, ``text_embedding``, and ``text_encoder``
    (the CLIP weights an official file provides, by their official
    ``text_model.*`` names). No style module: it has the ``appearance`` keys.
    A fresh copy on every call (the cached original stays intact).
    """
    cached = _expected_shapes_cached(json.dumps(config.to_dict(), sort_keys=True))
    return {c: dict(d) for c, d in cached.items()}


def folder_shapes(config: BackboneConfig, with_style: bool = False) -> Shapes:
    """What a converted folder holds: :func:`expected_shapes` without CLIP, plus ``style_appearance`` if asked."""
    shapes = expected_shapes(config)
    del shapes[TEXT_ENCODER]
    if with_style:  # the style appearance module is a second reference UNet (§3.2)
        shapes["style_appearance"] = dict(shapes["appearance"])
    assert set(shapes) == set(config.folder_components(with_style)), "component lists disagree"
    return shapes
