"""Tiny random-weight DiffPortrait360 checkpoints for tests, demos and CI.

``make_tiny(outdir)`` writes, in a few seconds on a CPU (``size="small"`` / ``"sd15"``
write the same set at larger shapes, as converted folders only; see :func:`make_tiny`)::

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
:func:`to_official`, a rule-based inverse of diffusers' converters that checks
itself against them (converting its output back must give exactly the input
keys); the tests also compare the values. The camera set is a cartoon head
(:func:`write_tiny_condition_set`), laid out like the official sphere32 set.

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
import re
import zlib
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .config import (BACK_VIEW, MAIN, MODULE_COMPONENTS, OFFICIAL_VIEWS, SIZES, TEXT_EMBEDDING,
                     BackboneConfig, component_file, tiny_config)
from .devices import resolve_dtype
from .images import ImageInputError
from .options import check_choice
from .sampling import mix_seed
from .official_keys import (
    CLIP_PREFIX,
    CONVERTED_COMPONENTS,
    POSE_PREFIX,
    POSITION_IDS,
    REFERENCE_PREFIX,
    SCHEDULE_KEYS,
    TEXT_ENCODER,
    UNET_PREFIX,
    VAE_PREFIX,
    canonical_clip_key,
    map_official_keys,
)
from .temporal import our_motion_key_to_official
from .weights import convert_checkpoint, empty_prompt_embedding, sidecar_config_path, write_component_file

__all__ = [
    "TINY_FILES",
    "build_tiny_model",
    "tiny_official_state_dict",
    "schedule_buffers",
    "to_official",
    "write_tiny_condition_set",
    "make_tiny",
]

TINY_FILES = {MAIN: "model_state-tiny.th", BACK_VIEW: "back_head-tiny.th"}
#: Components with the same weights in both tiny models (CLIP is shared too).
_SHARED_COMPONENTS = ("vae",)


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, zlib.crc32(name.encode())))


def _scaled(name: str, z: torch.Tensor) -> torch.Tensor:
    """Standard normal draws ``z`` for parameter ``name`` → its random value (see the module docstring)."""
    if z.ndim >= 2:
        return z / math.sqrt(z[0].numel())  # N(0, 1/fan_in)
    if name.endswith("weight"):  # GroupNorm / LayerNorm scales
        return 1.0 + 0.1 * z
    return 0.02 * z


@torch.no_grad()
def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    params = list(module.named_parameters())
    noise = torch.randn(sum(p.numel() for _, p in params), generator=gen)  # one draw: fast
    offset = 0
    for name, p in params:
        z = noise[offset:offset + p.numel()].view(p.shape)
        offset += p.numel()
        p.copy_(_scaled(name, z))


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
    for comp in MODULE_COMPONENTS:
        module = getattr(model, comp)
        if module is not None:  # no style module: make_tiny writes one separately
            # the VAE (frozen SD1.5 part) is the same in both kinds; the rest differs per kind
            _randomize(module, _generator(seed, comp if comp in _SHARED_COMPONENTS else f"{kind}/{comp}"))
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


# --------------------------------------------------------------------------- #
# Ours → official LDM names (the inverse of diffusers' converters, for the tiny checkpoints)
# --------------------------------------------------------------------------- #
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"


def _vae_resnet_rest(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def _unet_key_to_ldm(key: str, unet_cfg: dict) -> str:
    """diffusers UNet/ControlNet key → LDM key (inverse of diffusers' converters, SD1.5 layout)."""
    per = unet_cfg["layers_per_block"] + 1
    simple = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "controlnet_mid_block.": "middle_block_out.0.",
        "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
    }
    for ours, ldm in simple.items():
        if key.startswith(ours):
            return ldm + key[len(ours):]
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        side, b, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        blocks, i = ("input_blocks", b * per + j + 1) if side == "down" else ("output_blocks", b * per + j)
        return f"{blocks}.{i}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"{blocks}.{i}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"input_blocks.{(int(m.group(1)) + 1) * per}.0.op.{m.group(2)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        if m.group(1) == "resnets":
            return f"middle_block.{2 * int(m.group(2))}.{_resnet_rest(m.group(3))}"
        return f"middle_block.{2 * int(m.group(2)) + 1}.{m.group(3)}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key)
    if m:
        b = int(m.group(1))
        has_attn = unet_cfg["up_block_types"][b].startswith("CrossAttn")
        return f"output_blocks.{b * per + per - 1}.{2 if has_attn else 1}.conv.{m.group(2)}"
    m = re.match(r"controlnet_down_blocks\.(\d+)\.(.+)$", key)
    if m:
        return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
    m = re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)$", key)
    if m:
        return f"input_hint_block.{2 * (int(m.group(1)) + 1)}.{m.group(2)}"
    m = re.match(r"controlnet_cond_embedding\.conv_out\.(.+)$", key)
    if m:
        n_blocks = 2 * (len(unet_cfg.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) - 1)
        return f"input_hint_block.{2 * (n_blocks + 1)}.{m.group(1)}"
    raise KeyError(f"no LDM name for UNet/ControlNet key {key!r}")


def _vae_key_to_ldm(key: str, vae_cfg: dict) -> Tuple[str, bool]:
    """diffusers VAE key → (LDM key, needs 1×1-conv unsqueeze)."""
    n_up = len(vae_cfg["up_block_types"])
    for part in ("encoder", "decoder"):
        if key.startswith(part + ".conv_norm_out."):
            return key.replace(".conv_norm_out.", ".norm_out.", 1), False
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if m:
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_vae_resnet_rest(m.group(3))}", False
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m.group(1))}.block.{m.group(2)}.{_vae_resnet_rest(m.group(3))}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}", False
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key)
    if m:
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_vae_resnet_rest(m.group(3))}", False
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$",
                 key)
    if m:
        name = _VAE_ATTN_TO_LDM[m.group(2)]
        return f"{m.group(1)}.mid.attn_1.{name}.{m.group(3)}", m.group(2) != "group_norm" and m.group(3) == "weight"
    return key, False  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def to_official(
    components: Union[nn.Module, Mapping[str, Mapping[str, torch.Tensor]]],
    config: Optional[BackboneConfig] = None,
    text_encoder: Optional[Mapping[str, torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """Our weights → one flat official-layout state dict (LDM key names).

    ``components`` is a :class:`DiffStyle360Model` or ``{component: state
    dict}`` (any of ``unet``, ``temporal``, ``appearance``, ``pose_controlnet``,
    ``vae``, ``text_encoder``); ``text_encoder`` adds CLIP weights (transformers 4
    or 5 names). The result
    is checked against the forward map: converting it back with diffusers'
    converters yields exactly the input keys (else RuntimeError). Schedule
    buffers and ``position_ids`` are not added.
    """
    if isinstance(components, nn.Module):
        config = components.config
        comps = {c: getattr(components, c).state_dict() for c in CONVERTED_COMPONENTS
                 if c != TEXT_ENCODER and getattr(components, c) is not None}
    else:
        if config is None:
            raise ValueError("to_official needs config= with a dict of components")
        comps = {c: v for c, v in components.items() if c in CONVERTED_COMPONENTS}
    if text_encoder is not None:
        comps[TEXT_ENCODER] = text_encoder
    flat: Dict[str, torch.Tensor] = {}
    origin: Dict[str, Tuple[str, str]] = {}
    for comp, sd in comps.items():
        for key, tensor in sd.items():
            if comp == "unet":
                name = UNET_PREFIX + _unet_key_to_ldm(key, config.unet)
            elif comp == "temporal":
                name = our_motion_key_to_official(key, UNET_PREFIX)
            elif comp == "appearance":
                if not key.startswith("unet."):
                    raise KeyError(f"appearance key {key!r} does not start with 'unet.'")
                name = REFERENCE_PREFIX + _unet_key_to_ldm(key[len("unet."):], config.unet)
            elif comp == "pose_controlnet":
                if not key.startswith("net."):
                    raise KeyError(f"pose_controlnet key {key!r} does not start with 'net.'")
                name = POSE_PREFIX + _unet_key_to_ldm(key[len("net."):], config.controlnet)
            elif comp == "vae":
                ldm, unsqueeze = _vae_key_to_ldm(key, config.vae)
                name = VAE_PREFIX + ldm
                if unsqueeze:
                    tensor = tensor.reshape(tuple(tensor.shape) + (1, 1))
            else:  # text_encoder: official files always use the transformers-4 "text_model." names
                key = canonical_clip_key(key)
                name = CLIP_PREFIX + key
            if name in flat:
                raise RuntimeError(f"{comp}.{key} and {origin[name]} both map to {name}")
            flat[name] = tensor
            origin[name] = (comp, key)
    # Self-check: the forward (diffusers) map must send every name back where it came from.
    keymap = map_official_keys(flat, config)
    back = {(c, k): tag.key for c, entries in keymap.mapping.items() for k, tag in entries.items()}
    lost = {n: o for n, o in origin.items() if back.get(o) != n}
    if lost or any(keymap.unknown.values()):
        example = next(iter(lost.items()), None)
        raise RuntimeError(f"inverse key map is not the inverse of the converters: {example} {keymap.unknown}")
    return flat


# --------------------------------------------------------------------------- #
# Tiny camera-condition set (a cartoon head)
# --------------------------------------------------------------------------- #
def _render_tiny_head(size: int, yaw_deg: float) -> np.ndarray:
    """A shaded ellipse 'head' seen at ``yaw_deg``: skin face side, dark hair side.

    Facial markers (eyes, nose) sit at x = sin(yaw) across the head and are drawn
    only while they face the camera (cos(yaw) > 0), so the views are distinct and
    the back (180°) shows only hair. Cheap numpy drawing, fully deterministic.
    """
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx + 0.5 - s / 2) / (0.34 * s)   # head-local coords, ellipse radius 1
    v = (yy + 0.5 - s * 0.52) / (0.44 * s)
    r2 = u * u + v * v
    inside = r2 <= 1.0
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    # Surface longitude of each pixel on the head (0 = camera-facing), then the
    # angle relative to the face direction for this yaw.
    lon = np.arctan2(u, nz)
    rel = lon - math.radians(yaw_deg)
    facing = np.cos(rel)                      # > 0: face side, < 0: hair side
    shade = 0.35 + 0.65 * np.clip(0.3 * u * -1 + 0.2 * -v + 0.9 * nz, 0.0, 1.0)
    skin = np.array([0.90, 0.72, 0.60], np.float32)
    hair = np.array([0.25, 0.16, 0.10], np.float32)
    t = np.clip(facing * 1.5 + 0.2, 0.0, 1.0)[..., None]
    t = np.where((v < -0.45)[..., None], np.minimum(t, 0.15), t)  # hairline on top
    col = (t * skin + (1 - t) * hair) * shade[..., None]
    img = np.empty((size, size, 3), np.float32)
    img[...] = np.array([0.82, 0.85, 0.90], np.float32)  # light background
    img[inside] = col[inside]
    # facial markers
    yr = math.radians(yaw_deg)
    if math.cos(yr) > 0.05:
        def dot(lon_off: float, vy: float, rad: float, rgb: tuple[float, float, float]) -> None:
            mx = math.sin(yr + lon_off) * math.sqrt(max(0.0, 1 - vy * vy))
            if math.cos(yr + lon_off) <= 0:
                return
            m = ((u - mx) ** 2 + (v - vy) ** 2) <= rad * rad
            img[m & inside] = np.array(rgb, np.float32)
        dot(-0.45, -0.15, 0.09, (0.08, 0.08, 0.12))   # eyes
        dot(+0.45, -0.15, 0.09, (0.08, 0.08, 0.12))
        dot(0.0, 0.15, 0.11, (0.75, 0.35, 0.30))      # nose
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def write_tiny_condition_set(folder: Union[str, os.PathLike], size: int = 64, n: int = OFFICIAL_VIEWS) -> List[Path]:
    """Write ``n`` synthetic condition PNGs ``0000000.png …`` (yaw 360·k/n) for tests and demos.

    Same naming and yaw layout as the official sphere32 set (the layout
    ``cameras.load_condition_set`` assumes: k = 0 frontal, k = n/2 the back), but
    a cartoon head, so it only exercises the plumbing; it is no substitute for
    the real renders.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ImageInputError(f"size must be an integer of at least 32 px for a loadable set, got {size!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ImageInputError(f"n must be a positive integer, got {n!r}")
    d = Path(os.fspath(folder)).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(int(n)):
        p = d / f"{k:07d}.png"
        Image.fromarray(_render_tiny_head(int(size), 360.0 * k / int(n)), mode="RGB").save(p)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- #
# The whole set
# --------------------------------------------------------------------------- #
def _style_module(model, seed: int) -> Dict[str, torch.Tensor]:
    gen = _generator(seed, "style_module")
    out = {}
    for k, v in model.appearance.state_dict().items():
        noise = torch.randn(v.shape, generator=gen)
        scale = 0.1 * (v.float().std() if v.numel() > 1 else v.float().abs() + 0.02)
        out[k] = (v + scale * noise).contiguous()
    return out


def _random_component(module: nn.Module, gen: torch.Generator, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Seeded random state dict of a meta-built component, drawn one parameter at a time (low peak memory).

    Same value rule as :func:`_randomize`; the view-position tables (the only
    buffers) get their real sinusoidal values.
    """
    from .temporal import SinusoidalPositionalEncoding

    state = {name: _scaled(name, torch.randn(p.shape, generator=gen)).to(dtype)
             for name, p in module.named_parameters()}
    for name, sub in module.named_modules():
        if isinstance(sub, SinusoidalPositionalEncoding):
            table = SinusoidalPositionalEncoding(sub.pe.shape[2], sub.pe.shape[1]).pe
            state[f"{name}.pe" if name else "pe"] = table.to(dtype)
    missing = sorted(set(module.state_dict()) - set(state))
    if missing:
        raise RuntimeError(f"no random value rule for buffers {missing[:3]}")
    return state


def _write_random_folder(config: BackboneConfig, folder: Path, seed: int, dtype: torch.dtype) -> Path:
    """A converted model folder of ``config`` with seeded random weights, written component by component.

    The model is built on the meta device (no memory) and each component's
    tensors exist only while its file is written, so an sd15 main model
    (≈ 2.5 G parameters) needs about one UNet's worth of RAM. ``config.json``
    is written last: a folder with it is complete.
    """
    from .model import DiffStyle360Model
    from .weights import write_component_file, writing_model_folder

    with torch.device("meta"):
        model = DiffStyle360Model(config)
    with writing_model_folder(folder, config) as folder:
        for comp in config.folder_components():
            gen = _generator(seed, comp if comp in _SHARED_COMPONENTS else f"{config.kind}/{comp}")
            if comp == TEXT_EMBEDDING:
                state = {TEXT_EMBEDDING: torch.randn(tuple(model.text_embedding.shape), generator=gen).to(dtype)}
            else:
                state = _random_component(getattr(model, comp), gen, dtype)
            write_component_file(state, folder / component_file(comp), comp)
            del state
    return folder


def make_tiny(outdir: Union[str, os.PathLike], seed: int = 0, *, size: str = "tiny",
              dtype: Union[str, torch.dtype, None] = None) -> Dict[str, Path]:
    """Write a random-weight model set (see module docstring) and return ``{name: path}``.

    ``size`` (:data:`~.config.SIZES`): ``tiny`` (seconds, the official ``.th``
    files plus their conversion), ``small`` (SD1.5 topology at CPU widths) or
    ``sd15`` (the released models' shapes: ≈ 5 GB main + 4.4 GB back view +
    1.7 GB style module in fp16, for memory and speed checks without a
    download). Sizes other than tiny are written as converted folders
    directly (no ``original/``). ``dtype`` (e.g. ``"fp16"``): the stored
    precision of the converted files (default: float32).

    Names: ``original_main``, ``original_back_view`` (``.th``, tiny only),
    ``main``, ``back_view`` (converted folders), ``cam_condition``, ``style_module``.
    """
    make_config = SIZES[check_choice("size", size, tuple(SIZES))]
    dtype = None if dtype is None else resolve_dtype(dtype, "cpu")
    out = Path(os.fspath(outdir)).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    if size == "tiny":
        (out / "original").mkdir(exist_ok=True)
        main_model = None
        for kind in (MAIN, BACK_VIEW):
            model, text = build_tiny_model(kind, seed)
            th = out / "original" / TINY_FILES[kind]
            torch.save(tiny_official_state_dict(model, text), th)
            sidecar_config_path(th).write_text(json.dumps(model.config.to_dict(), indent=2))
            paths[f"original_{kind}"] = th
            paths[kind] = convert_checkpoint(th, out / kind, kind=kind, dtype=dtype)
            if kind == MAIN:
                main_model = model
        style = _style_module(main_model, seed)
    else:
        for kind in (MAIN, BACK_VIEW):
            paths[kind] = _write_random_folder(make_config(kind), out / kind, seed, dtype or torch.float32)
        with torch.device("meta"):
            appearance = _new_appearance(make_config(MAIN))
        style = _random_component(appearance, _generator(seed, "style_module"), dtype or torch.float32)
    cams = out / "cam_condition" / "sphere32"
    write_tiny_condition_set(cams, size=make_config(MAIN).image_size, n=OFFICIAL_VIEWS)
    paths["cam_condition"] = cams
    paths["style_module"] = write_component_file(style, out / f"style_module-{size}.safetensors",
                                                 "style_appearance", dtype)
    return paths


def _new_appearance(config: BackboneConfig) -> nn.Module:
    from .appearance import AppearanceModule

    return AppearanceModule(config.unet)
