"""View-consistency modules (paper Fig. 2 "V"): AnimateDiff-v1 temporal transformers.

DiffPortrait360 keeps its views consistent with AnimateDiff-v1 "Vanilla" motion
modules that attend across the view axis at every spatial position
(facts file §4). This file holds the module, where the 20 copies sit in the
UNet, and the key mapping from the official checkpoint.

Parameter names follow the official checkpoint, so a module's state_dict loads
from ``model.diffusion_model.{input,output}_blocks_motion_module.{i}.0.*`` by
renaming the prefix only (``reference/dp360-keys-notes.md``).

Why not diffusers' ``AnimateDiffTransformer3D``: it is the same block (GroupNorm,
proj_in, two self-attentions across frames with the sinusoidal table added
before the projections, GEGLU feed-forward, proj_out, residual) except that its
GroupNorm statistics span all frames of a window, while AnimateDiff-v1 and
DiffPortrait360 normalize each frame (view) on its own. Loaded with the same
weights (C = 64, 8 views, random weights and inputs) the outputs differ by up to
0.14 (outputs up to 5); with our GroupNorm made to span the frames they are
equal to the last bit (max |diff| 0.0). The released weights were trained with
the per-frame norm, so the block stays ours.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "SinusoidalPositionalEncoding",
    "TemporalSelfAttention",
    "GEGLU",
    "FeedForward",
    "TemporalTransformerBlock",
    "TemporalTransformer",
    "ViewConsistencyModule",
    "MotionModuleSlot",
    "motion_module_placement",
    "MOTION_MODULE_PLACEMENT",
    "build_view_consistency_modules",
    "OFFICIAL_MOTION_PREFIXES",
    "OFFICIAL_UNET_PREFIX",
    "official_motion_key_to_ours",
    "our_motion_key_to_official",
]


# --------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------- #
class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal view-position table ``pe`` [1, max_len, C].

    Persistent because the official checkpoint stores it (facts §4: 24
    positions, only the first ``video_length`` = 8 used, relative to the
    window, not to absolute yaw). Computed in float32 as AnimateDiff does.
    """

    def __init__(self, channels: int, max_len: int = 24):
        super().__init__()
        if channels % 2:
            raise ValueError(f"positional encoding needs an even channel count, got {channels}")
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        div = torch.exp(
            torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels)
        )
        pe = torch.zeros(1, max_len, channels, dtype=torch.float32)
        pe[0, :, 0::2] = torch.sin(position * div)
        pe[0, :, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe, persistent=True)

    @property
    def max_len(self) -> int:
        return self.pe.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the encoding for positions 0..L-1 to ``x`` [N, L, C]."""
        return x + self.pe[:, : x.shape[1]].to(x)


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention across views at each spatial location.

    The positional encoding is added to the (already layer-normed) input inside
    the attention, before the q/k/v projections, as in AnimateDiff v1
    ``VersionedAttention`` (facts §4).
    """

    def __init__(self, channels: int, num_heads: int = 8, max_views: int = 24):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        # Registration order mirrors the official key order.
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.pos_encoder = SinusoidalPositionalEncoding(channels, max_views)

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        """``x`` [(B·F), D, C] tokens of F consecutive views → same shape."""
        tokens = x.shape[1]
        x = self.pos_encoder(rearrange(x, "(b f) d c -> (b d) f c", f=num_views))
        q, k, v = (rearrange(proj(x), "n f (h k) -> n h f k", h=self.num_heads)
                   for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale = 1/sqrt(head_dim)
        out = rearrange(out, "n h f k -> n f (h k)")
        for layer in self.to_out:
            out = layer(out)
        return rearrange(out, "(b d) f c -> (b f) d c", d=tokens)


class GEGLU(nn.Module):
    """``hidden * gelu(gate)``; first half of ``proj`` is hidden, second the gate."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, mult 4; ``net`` indices match diffusers' FeedForward keys."""

    def __init__(self, channels: int, mult: int = 4):
        super().__init__()
        inner = channels * mult
        self.net = nn.ModuleList([GEGLU(channels, inner), nn.Dropout(0.0), nn.Linear(inner, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalTransformerBlock(nn.Module):
    """Two pre-norm temporal self-attentions, then a pre-norm GEGLU FF (facts §4)."""

    def __init__(self, channels: int, num_heads: int = 8, max_views: int = 24, num_attention_blocks: int = 2):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(channels, num_heads, max_views) for _ in range(num_attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(channels)
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), num_views) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """GroupNorm → proj_in → block → proj_out, plus the outer residual (facts §4)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        max_views: int = 24,
        norm_num_groups: int = 32,
        zero_init: bool = True,
    ):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, num_heads, max_views)])
        self.proj_out = nn.Linear(channels, channels)
        if zero_init:
            # AnimateDiff zero-initialises proj_out so a fresh module is the identity.
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, num_views: int) -> torch.Tensor:
        residual = hidden_states
        x = rearrange(self.norm(hidden_states), "n c h w -> n (h w) c")
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, num_views)
        x = self.proj_out(x)
        x = rearrange(x, "n (h w) c -> n c h w", h=hidden_states.shape[2]).contiguous()
        # Cast back so the dtype is preserved under autocast, too.
        return residual + x.to(residual.dtype)


class ViewConsistencyModule(nn.Module):
    """One view-consistency (motion) module for ``channels``-wide features.

    Input ``[(B·F), C, h, w]`` with the F views of each batch item consecutive;
    the output has the same shape and dtype. Its state_dict equals one official
    ``..._motion_module.{i}.0.*`` entry after prefix renaming (facts §4,
    ``dp360-keys-notes.md``).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        max_views: int = 24,
        norm_num_groups: int = 32,
        zero_init: bool = True,
    ):
        super().__init__()
        if channels % norm_num_groups:
            raise ValueError(f"channels={channels} is not divisible by norm_num_groups={norm_num_groups}")
        self.channels = channels
        self.num_heads = num_heads
        self.max_views = max_views
        self.temporal_transformer = TemporalTransformer(channels, num_heads, max_views, norm_num_groups, zero_init)

    def forward(self, hidden_states: torch.Tensor, num_views: int) -> torch.Tensor:
        if hidden_states.ndim != 4:
            raise ValueError(
                f"expected hidden_states of shape [(batch*views), C, h, w], got {tuple(hidden_states.shape)}"
            )
        num_views = int(num_views)
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if num_views > self.max_views:
            raise ValueError(
                f"num_views={num_views} exceeds max_views={self.max_views} (length of the positional "
                f"encoding; the official checkpoint holds 24 and was trained on 8); reduce the view "
                f"window length to at most {self.max_views}"
            )
        if hidden_states.shape[0] % num_views:
            raise ValueError(
                f"batch size {hidden_states.shape[0]} is not divisible by num_views={num_views}; "
                f"the views of each item must be stacked consecutively as (batch*views)"
            )
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {hidden_states.shape[1]}")
        return self.temporal_transformer(hidden_states, num_views)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_heads={self.num_heads}, max_views={self.max_views}"


# --------------------------------------------------------------------------- #
# Placement
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class MotionModuleSlot:
    """Where one module sits in the LDM UNet.

    ``index``: position in ``input_blocks_motion_module`` / ``output_blocks_motion_module``
    (= our ``down`` / ``up`` index); ``ldm_block``: the LDM ``input_blocks`` /
    ``output_blocks`` index it runs after; ``level``: index into
    ``block_out_channels``; ``after_upsampler``: runs after the block's Upsample,
    at doubled resolution (DP360 quirk, facts §4).
    """

    index: int
    ldm_block: int
    level: int
    channels: int
    after_upsampler: bool = False


def motion_module_placement(
    block_out_channels: Sequence[int], layers_per_block: int = 2
) -> Dict[str, Tuple[MotionModuleSlot, ...]]:
    """Slots for a generic LDM UNet, following DiffPortrait360's layout (facts §4).

    Encoder: one after each ResBlock[+Transformer] input block (not after conv_in
    or the downsamplers). Middle: none. Decoder: one after every output block;
    the last block of each level except the finest runs it after its upsampler.
    """
    n = len(block_out_channels)
    down = []
    for level in range(n):
        for j in range(layers_per_block):
            down.append(
                MotionModuleSlot(
                    index=len(down),
                    ldm_block=1 + level * (layers_per_block + 1) + j,
                    level=level,
                    channels=int(block_out_channels[level]),
                )
            )
    up = []
    per_level = layers_per_block + 1
    for k in range(n * per_level):
        level = n - 1 - k // per_level
        up.append(
            MotionModuleSlot(
                index=k,
                ldm_block=k,
                level=level,
                channels=int(block_out_channels[level]),
                after_upsampler=(k % per_level == per_level - 1) and level != 0,
            )
        )
    return {"down": tuple(down), "mid": (), "up": tuple(up)}


#: The official SD1.5 layout (facts §4): 8 encoder modules after input_blocks
#: 1,2,4,5,7,8,10,11 (C = 320,320,640,640,1280,1280,1280,1280), none in the
#: middle, 12 decoder modules after output_blocks 0..11 (C = 1280×6, 640×3,
#: 320×3), those after output_blocks 2, 5, 8 running after the upsampler.
MOTION_MODULE_PLACEMENT = motion_module_placement((320, 640, 1280, 1280), layers_per_block=2)


def build_view_consistency_modules(
    block_out_channels: Sequence[int],
    layers_per_block: int = 2,
    num_heads: int = 8,
    max_views: int = 24,
    norm_num_groups: int = 32,
) -> Tuple[nn.ModuleList, nn.ModuleList]:
    """Build ``(down, up)`` module lists; ``down[i]`` ↔ official
    ``input_blocks_motion_module.i``, ``up[j]`` ↔ ``output_blocks_motion_module.j``.
    """
    slots = motion_module_placement(block_out_channels, layers_per_block)

    def make(slot: MotionModuleSlot) -> ViewConsistencyModule:
        return ViewConsistencyModule(slot.channels, num_heads, max_views, norm_num_groups)

    down = nn.ModuleList([make(s) for s in slots["down"]])
    up = nn.ModuleList([make(s) for s in slots["up"]])
    return down, up


# --------------------------------------------------------------------------- #
# Key mapping
# --------------------------------------------------------------------------- #
OFFICIAL_MOTION_PREFIXES = ("input_blocks_motion_module", "output_blocks_motion_module")
OFFICIAL_UNET_PREFIX = "model.diffusion_model."
_OURS = {"input_blocks_motion_module": "down", "output_blocks_motion_module": "up"}
_OFFICIAL = {v: k for k, v in _OURS.items()}
_OFFICIAL_RE = re.compile(
    r"^(input_blocks_motion_module|output_blocks_motion_module)\.(\d+)\.0\.(temporal_transformer\..+)$"
)
_OURS_RE = re.compile(r"^(down|up)\.(\d+)\.(temporal_transformer\..+)$")


def official_motion_key_to_ours(key: str, official_prefix: str = OFFICIAL_UNET_PREFIX) -> str:
    """``model.diffusion_model.input_blocks_motion_module.{i}.0.temporal_transformer.X``
    → ``down.{i}.temporal_transformer.X`` (output → ``up``); ValueError otherwise."""
    if not key.startswith(official_prefix):
        raise ValueError(f"not an official motion-module key (missing prefix {official_prefix!r}): {key!r}")
    m = _OFFICIAL_RE.match(key[len(official_prefix):])
    if m is None:
        raise ValueError(f"not an official motion-module key: {key!r}")
    return f"{_OURS[m.group(1)]}.{int(m.group(2))}.{m.group(3)}"


def our_motion_key_to_official(key: str, official_prefix: str = OFFICIAL_UNET_PREFIX) -> str:
    """Inverse of :func:`official_motion_key_to_ours`; ValueError on other keys."""
    m = _OURS_RE.match(key)
    if m is None:
        raise ValueError(f"not one of our motion-module keys (down.i./up.j.temporal_transformer.*): {key!r}")
    return f"{official_prefix}{_OFFICIAL[m.group(1)]}.{int(m.group(2))}.0.{m.group(3)}"
