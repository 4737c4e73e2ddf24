"""Content / Style Appearance Module: DiffPortrait360's reference UNet (§3.2, facts §2).

A full SD1.5 UNet copy without output head. It sees the *clean* reference
latent at the *same* timestep t as the main UNet and exports the post-norm1
hidden states of its 16 self-attention blocks. Its own output is discarded, so
it has no ``conv_norm_out``/``conv_out`` (the official ``control_model.*`` keys
have no ``out.*``).
"""

from __future__ import annotations

from typing import Dict

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .attention import ReferenceBank, install_bank_writers
from .unet_walk import CompiledForward, active_compile_key, run_forward, timestep_tensor, walk_unet


def reference_walk(unet: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> None:
    """The reference UNet's forward up to its last decoder layer; the bank writers record on the way."""
    walk_unet(unet, latents, timestep, context, output_head=False)


class AppearanceModule(nn.Module):
    """Reference UNet that turns reference latents into per-layer attention banks."""

    def __init__(self, unet_config: dict):
        super().__init__()
        self.unet = UNet2DConditionModel(**unet_config)
        # The reference UNet has no output head (facts §2); drop it so every
        # parameter we own is filled by the checkpoint.
        self.unet.conv_norm_out = None
        self.unet.conv_act = None
        self.unet.conv_out = None
        self._bank = ReferenceBank()
        self.layer_names = install_bank_writers(self.unet, self._bank)
        self.compiled_forwards: Dict[tuple, CompiledForward] = {}  # compile_model(scope="full"), per settings

    def forward(self, latents: torch.Tensor, timestep, context: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Bank ``{attn1 layer name: [R, tokens, C]}`` for R clean reference latents at timestep t."""
        self._bank.clear()
        self._bank.recording = True
        try:
            run_forward(self.compiled_forwards, reference_walk, self.unet, latents,
                        timestep_tensor(timestep, latents.device), context)
            bank = self._bank.features
            compiled = self.compiled_forwards.get(active_compile_key())
            if compiled is not None and compiled.cuda_graphs:
                bank = {name: features.clone() for name, features in bank.items()}  # out of the graph's pool
        finally:
            self._bank.recording = False
            self._bank.clear()
        if len(bank) != len(self.layer_names):
            raise RuntimeError(f"reference UNet wrote {len(bank)} of {len(self.layer_names)} attention banks")
        return bank


def split_references(bank: Dict[str, torch.Tensor], groups) -> list:
    """Split a batched bank into per-image banks, tokens of each group's views concatenated.

    ``groups`` lists, per output bank, the batch rows to join (e.g. ``[[0, 1], [2, 3]]``
    for content front+back and style front+back run in one pass).
    """
    out = []
    for rows in groups:
        out.append({n: torch.cat([f[r : r + 1] for r in rows], dim=1) for n, f in bank.items()})
    return out
