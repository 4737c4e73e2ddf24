"""Tiny random-weight DiffPortrait360 checkpoints for tests, demos and CI.

``make_tiny(outdir)`` writes, in a few seconds on a CPU::

    outdir/original/model_state-tiny.th          official LDM key layout, flat torch.save
    outdir/original/model_state-tiny.config.json sidecar: the tiny config (real files need none)
    outdir/original/back_head-tiny.th  (+ .config.json)
    outdir/main/        converted main model (as `convert` writes it)
    outdir/back_view/   converted back-view model
    outdir/cam_condition/sphere32/   32 synthetic 64×64 camera-condition renders
    outdir/style_module-tiny.safetensors   a style appearance module (perturbed content module)

The ``.th`` files hold every key group of the real checkpoints (UNet with
motion modules and their ``pe`` buffers, reference UNet, pose ControlNet, VAE,
CLIP incl. ``position_ids``, fp16 schedule buffers and fp32 ``logvar``), so the
whole conversion path runs on them. Our weights are written in LDM names with
:func:`diffstyle360_core.official_keys.to_official`, a rule-based inverse of
diffusers' converters that checks itself against them (converting its output
back must give exactly the input keys); the tests also compare the values.

The models are :func:`tiny_config` with seeded random weights: weight
matrices N(0, 1/fan_in) (activations stay O(1)), norm scales 1 + N(0, 0.1²),
biases N(0, 0.02²). Nothing is zero, so the temporal modules, zero-convs and
output heads all act. VAE and CLIP are the same in both models (frozen SD1.5
parts in the real ones); the rest differs per kind.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Dict, Union

import torch
from torch import nn

from .config import BACK_VIEW, MAIN, BackboneConfig, tiny_config
from .official_keys import POSITION_IDS, SCHEDULE_KEYS, to_official
from .weights import convert_checkpoint, empty_prompt_embedding, sidecar_config_path

__all__ = ["build_tiny_model", "tiny_official_state_dict", "schedule_buffers", "make_tiny", "TINY_FILES"]

TINY_FILES = {MAIN: "model_state-tiny.th", BACK_VIEW: "back_head-tiny.th"}


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


@torch.no_grad()
def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    params = list(module.named_parameters())
    noise = torch.randn(sum(p.numel() for _, p in params), generator=gen)  # one draw: fast
    offset = 0
    for name, p in params:
        z = noise[offset:offset + p.numel()].view(p.shape)
        offset += p.numel()
        if p.ndim >= 2:
            p.copy_(z / math.sqrt(p[0].numel()))  # N(0, 1/fan_in)
        elif name.endswith("weight"):  # GroupNorm / LayerNorm scales
            p.copy_(1.0 + 0.1 * z)
        else:
            p.copy_(0.02 * z)


def _tiny_text_encoder(config: BackboneConfig, seed: int) -> Dict[str, torch.Tensor]:
    from transformers import CLIPTextConfig, CLIPTextModel

    clip = CLIPTextModel(CLIPTextConfig(**config.text_encoder))
    _randomize(clip, _generator(seed, "text_encoder"))
    return {k: v.detach().clone() for k, v in clip.state_dict().items()}


def build_tiny_model(kind: str = MAIN, seed: int = 0):
    """``(DiffStyle360Model, CLIP text state dict)`` of the tiny config, deterministic in ``seed``.

    ``model.text_embedding`` is the empty-prompt embedding of that CLIP.
    """
    from .model import DiffStyle360Model

    config = tiny_config(kind)
    model = DiffStyle360Model(config)
    for comp in ("unet", "temporal", "appearance", "pose_controlnet"):
        module = getattr(model, comp)
        if module is not None:
            _randomize(module, _generator(seed, f"{kind}/{comp}"))
    _randomize(model.vae, _generator(seed, "vae"))
    text = _tiny_text_encoder(config, seed)
    with torch.no_grad():
        model.text_embedding.copy_(empty_prompt_embedding(text, config))
    return model.eval(), text


def schedule_buffers(config: BackboneConfig) -> Dict[str, torch.Tensor]:
    """LDM ``register_schedule`` buffers (scaled-linear betas), float16 as in the DP360 code; ``logvar`` fp32 zeros."""
    s = config.schedule
    betas = torch.linspace(s.beta_start ** 0.5, s.beta_end ** 0.5, s.num_train_timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    assert tuple(values) == SCHEDULE_KEYS
    out = {k: v.to(torch.float16) for k, v in values.items()}
    out["logvar"] = torch.zeros(s.num_train_timesteps, dtype=torch.float32)
    return out


def tiny_official_state_dict(model, text_state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Flat official-layout state dict of ``model`` (as ``torch.save(model.state_dict())`` of the LDM module)."""
    flat = dict(schedule_buffers(model.config))
    official = to_official(model, text_encoder=text_state_dict)
    flat.update({k: v.detach() for k, v in official.items()})
    flat[POSITION_IDS] = torch.arange(model.config.text_encoder["max_position_embeddings"]).unsqueeze(0)
    return flat


def _style_module(model, seed: int) -> Dict[str, torch.Tensor]:
    gen = _generator(seed, "style_module")
    out = {}
    for k, v in model.appearance.state_dict().items():
        noise = torch.randn(v.shape, generator=gen)
        scale = 0.1 * (v.float().std() if v.numel() > 1 else v.float().abs() + 0.02)
        out[k] = (v + scale * noise).contiguous()
    return out


def make_tiny(outdir: Union[str, os.PathLike], seed: int = 0) -> Dict[str, Path]:
    """Write the tiny model set (see module docstring) and return ``{name: path}``.

    Names: ``original_main``, ``original_back_view`` (``.th``), ``main``,
    ``back_view`` (converted folders), ``cam_condition``, ``style_module``.
    """
    from safetensors.torch import save_file

    from .cameras import write_tiny_condition_set

    out = Path(os.fspath(outdir)).expanduser()
    (out / "original").mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    main_model = None
    for kind in (MAIN, BACK_VIEW):
        model, text = build_tiny_model(kind, seed)
        th = out / "original" / TINY_FILES[kind]
        torch.save(tiny_official_state_dict(model, text), th)
        sidecar_config_path(th).write_text(json.dumps(model.config.to_dict(), indent=2))
        paths[f"original_{kind}"] = th
        paths[kind] = convert_checkpoint(th, out / kind, kind=kind)
        if kind == MAIN:
            main_model = model
    cams = out / "cam_condition" / "sphere32"
    write_tiny_condition_set(cams, size=tiny_config(MAIN).image_size, n=32)
    paths["cam_condition"] = cams
    style = out / "style_module-tiny.safetensors"
    save_file(_style_module(main_model, seed), str(style), metadata={"format": "pt",
                                                                      "diffstyle360_component": "style_appearance"})
    paths["style_module"] = style
    return paths
