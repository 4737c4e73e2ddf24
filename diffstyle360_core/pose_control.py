"""Camera / view control: DiffPortrait360's pose ControlNet (facts §3).

A standard SD1.5 ControlNet whose hint is an RGB rendering of another head at
the target camera, given in [-1, 1] (not the [0, 1] of stock ControlNets). Its
13 residuals are added to the main UNet's skips and middle output at scale 1.
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel
from torch import nn

from .unet_walk import ControlResiduals


class PoseControlNet(nn.Module):
    def __init__(self, controlnet_config: dict):
        super().__init__()
        self.net = ControlNetModel(**controlnet_config)

    def forward(self, noisy: torch.Tensor, timestep, context: torch.Tensor, hint: torch.Tensor) -> ControlResiduals:
        """Residuals for noisy latents [B,4,h,w] and pose hints [B,3,H,W] in [-1, 1]."""
        if context.shape[0] == 1 and noisy.shape[0] > 1:
            context = context.expand(noisy.shape[0], -1, -1)
        down, mid = self.net(
            noisy, timestep, encoder_hidden_states=context, controlnet_cond=hint.to(noisy.dtype), return_dict=False
        )
        return ControlResiduals(down=list(down), mid=mid)
