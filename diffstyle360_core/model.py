"""Assembles DiffPortrait360 + DiffStyle360 from their parts (Fig. 2a); no file I/O here.

Main UNet (frozen SD1.5, every ``attn1`` a Style Fusion reader) + content
appearance module + optional style appearance module + pose ControlNet +
view-consistency modules (main model only) + VAE + the constant empty-prompt
embedding (the official prompt is always "", facts §5, so CLIP is only needed
once, at conversion).
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from .appearance import AppearanceModule, split_references
from .attention import FusionCall, FusionSlot, install_fusion_readers
from .config import CLIP_CONTEXT_LENGTH, BackboneConfig
from .loading import model_device_dtype
from .pose_control import PoseControlNet
from .temporal import build_view_consistency_modules
from .unet_walk import CompiledForward, compile_key_of, compiling_as, run_forward, timestep_tensor, walk_unet


def denoiser_forward(model: "DiffStyle360Model", noisy: torch.Tensor, timestep: torch.Tensor,
                     hints: Optional[torch.Tensor], num_views: Optional[int]) -> torch.Tensor:
    """One ε prediction with the references already bound: pose ControlNet residuals + the UNet walk.

    A plain function of tensors (the attention layers read their bound
    reference slots), so ``compile_model(scope="full")`` can trace it as one graph.
    """
    control = None
    if hints is not None:
        control = model.pose_controlnet(noisy, timestep, model.text_embedding.to(noisy), hints.to(noisy))
    temporal = model.temporal
    return walk_unet(
        model.unet,
        noisy,
        timestep,
        model.text_embedding.to(noisy),  # a host may keep the buffer on the CPU (partial loading)
        temporal_down=temporal["down"] if temporal is not None else None,
        temporal_up=temporal["up"] if temporal is not None else None,
        num_views=num_views,
        control=control,
    )

class DiffStyle360Model(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.unet = UNet2DConditionModel(**config.unet)
        self.fusion = FusionSlot()  # holds a FusionCall only while predict_noise runs
        self.attention_layers = install_fusion_readers(self.unet, self.fusion)
        self.temporal: Optional[nn.ModuleDict] = None
        if config.temporal is not None:
            down, up = build_view_consistency_modules(
                config.unet["block_out_channels"],
                layers_per_block=config.unet["layers_per_block"],
                num_heads=config.temporal.num_heads,
                max_views=config.temporal.max_views,
                norm_num_groups=config.temporal.norm_num_groups,
            )
            self.temporal = nn.ModuleDict({"down": down, "up": up})
        self.appearance = AppearanceModule(config.unet)
        self.style_appearance: Optional[AppearanceModule] = None
        self.pose_controlnet = PoseControlNet(config.controlnet)
        self.vae = AutoencoderKL(**config.vae)
        self.register_buffer("text_embedding", torch.zeros(1, CLIP_CONTEXT_LENGTH, config.context_dim))
        self.compiled_forwards: Dict[tuple, CompiledForward] = {}  # compile_model(scope="full"), per settings

    # ----- style appearance module (§3.2) -------------------------------------------------
    def add_style_module(self) -> AppearanceModule:
        """A separately weighted Style Appearance Module, initialised from the content module (§3.2)."""
        self.style_appearance = copy.deepcopy(self.appearance)
        return self.style_appearance

    @property
    def style_module(self) -> AppearanceModule:
        """The style module; in training-free mode (none loaded) the content module itself (§4 ablation)."""
        return self.style_appearance if self.style_appearance is not None else self.appearance

    @property
    def training_free(self) -> bool:
        return self.style_appearance is None

    # ----- latents ------------------------------------------------------------------------
    @property
    def scale_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Images [B,3,H,W] in [-1,1] → latents × 0.18215; posterior *sampled* as the official code does."""
        images = images.to(*model_device_dtype(self))
        dist = self.vae.encode(images).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean)
        return (dist.mean + dist.std * noise) * self.scale_factor

    def decode(self, latents: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """Latents → images in [-1,1], ``chunk`` at a time to bound VAE memory."""
        out = [self.vae.decode(part / self.scale_factor).sample for part in latents.split(max(1, chunk))]
        return torch.cat(out).clamp(-1, 1)

    # ----- reference features -------------------------------------------------------------
    def reference_banks(
        self,
        content: Optional[torch.Tensor],
        styles: Sequence[torch.Tensor],
        timestep,
    ) -> tuple:
        """Content bank and style banks for clean reference latents at timestep t.

        ``content`` is [R,4,h,w] (front, back …) and each style [R,4,h,w]. Each
        image's views become one bank with their tokens concatenated (facts §2).
        Reference features depend on t, not on the view: call once per step.
        When the style module is the content module (training-free) all images
        share one batched pass.
        """
        images = ([content] if content is not None else []) + list(styles)
        if not images:
            return None, []
        groups, row = [], 0
        for lat in images:
            groups.append(list(range(row, row + lat.shape[0])))
            row += lat.shape[0]
        context = self.text_embedding.to(images[0].device)
        with compiling_as(compile_key_of(self)):
            banks = self._reference_banks(content, styles, images, groups, context, timestep)
        if content is None:
            return None, banks
        return banks[0], banks[1:]

    def _reference_banks(self, content, styles, images, groups, context, timestep) -> list:
        if self.training_free or not styles or content is None:
            # one pass: a single module sees every image (content module unless only styles)
            module = self.appearance if content is not None else self.style_module
            banks = split_references(module(torch.cat(images), timestep, context), groups)
        else:
            first = len(groups[0])
            banks = split_references(self.appearance(content, timestep, context), groups[:1])
            style_groups = [[r - first for r in g] for g in groups[1:]]
            banks += split_references(self.style_module(torch.cat(images[1:]), timestep, context), style_groups)
        return banks

    # ----- one denoiser call --------------------------------------------------------------
    def predict_noise(
        self,
        noisy: torch.Tensor,
        timestep,
        hints: Optional[torch.Tensor],
        *,
        num_views: Optional[int] = None,
        references: Optional[FusionCall] = None,
    ) -> torch.Tensor:
        """ε for noisy latents [B,4,h,w] (B = windows × views per window).

        ``references`` (content/style banks and the fusion settings) apply to
        this call only. ``references=None`` is the CFG unconditional branch of
        ``controlnet_important``: no reference attention *and* no pose
        residuals, so the ControlNet is not run at all (its output would be
        discarded, facts §1).
        """
        noisy = noisy.to(self.vae.dtype)
        timestep = timestep_tensor(timestep, noisy.device)
        self.fusion.bind(references)
        try:
            with compiling_as(compile_key_of(self)):
                return run_forward(self.compiled_forwards, denoiser_forward, self, noisy, timestep,
                                   hints if references is not None else None, num_views)
        finally:
            self.fusion.release()
