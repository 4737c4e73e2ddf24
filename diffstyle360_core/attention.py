"""The two attention processors that connect the appearance modules to the main UNet.

DiffPortrait360 (facts §2): every self-attention (``attn1``) of the reference UNet
*writes* its post-norm1 hidden states into a bank; the matching ``attn1`` of the
main UNet *reads* them and attends over ``[self | front | back]`` tokens using its
own W_K / W_V. DiffStyle360 (§3.3) extends the read side to Style Fusion
Attention. Layers are paired by diffusers layer name (e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn1``), never by list order.

What a read processor does on each call comes from a :class:`FusionState`
(references, τ, masks, blend weights), not from globals, so two pipelines never
share settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import blend_styles, multi_style_fusion_attention, style_fusion_attention

Bank = Dict[str, torch.Tensor]


def self_attention_names(unet: nn.Module) -> List[str]:
    """Names of the self-attention layers (``...attn1``) in forward order (down, mid, up)."""
    names = [name for name, _ in unet.named_modules() if name.endswith("attn1")]
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: stage.get(n.split(".")[0], 3))


def _project(attn: nn.Module, hidden: torch.Tensor):
    return attn.to_k(hidden), attn.to_v(hidden)


def _finish(attn: nn.Module, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _check_self_attention(attn: nn.Module, hidden: torch.Tensor, encoder_hidden_states) -> None:
    if encoder_hidden_states is not None and encoder_hidden_states is not hidden:
        raise ValueError("reference processors are for self-attention (attn1) layers only")
    if hidden.ndim != 3:
        raise ValueError(f"expected [B, tokens, C] hidden states in attn1, got {tuple(hidden.shape)}")
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_q is not None:
        raise ValueError("this attention layer uses norms the SD1.5 layout does not have")


class BankWriterProcessor:
    """Reference-UNet ``attn1``: records the post-norm1 input, then attends as usual."""

    def __init__(self, bank: "ReferenceBank", name: str):
        self.bank = bank
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        _check_self_attention(attn, hidden_states, encoder_hidden_states)
        if self.bank.recording:
            self.bank.features[self.name] = hidden_states
        q = attn.to_q(hidden_states)
        k, v = _project(attn, hidden_states)
        out = style_fusion_attention(q, k, v, None, None, None, None, heads=attn.heads)
        return _finish(attn, out, hidden_states)


class ReferenceBank:
    """Per-layer hidden states written by one appearance-module forward."""

    def __init__(self):
        self.features: Bank = {}
        self.recording = False


def concat_banks(banks: Sequence[Bank]) -> Bank:
    """Front and back references of one image → one bank with tokens concatenated.

    Facts §2: extra references append tokens (``cat(dim=1)``) in every layer.
    """
    names = banks[0].keys()
    for bank in banks[1:]:
        if bank.keys() != names:
            raise ValueError("reference banks come from different UNets (layer names differ)")
    return {n: torch.cat([b[n] for b in banks], dim=1) for n in names}


@dataclass
class StyleEntry:
    """One style region: a bank (or several banks blended with ``weights``) and a mask.

    ``banks`` hold the style appearance features F_s (front+back tokens).
    ``weights`` are the interpolation weights of §4 (α for two styles:
    ``(1-α, α)``). ``mask`` is the local-stylization mask in image space,
    ``[R, H, W]`` with one plane per reference view (front, back), values in
    [0, 1]; None means stylize everywhere.
    """

    banks: List[Bank]
    weights: Optional[Sequence[float]] = None
    mask: Optional[torch.Tensor] = None


TauSpec = Union[float, Dict[str, float], Callable[[str], float]]


@dataclass
class FusionState:
    """What the main UNet's ``attn1`` layers attend to on the next forward.

    ``content`` None and no styles: stock self-attention (and the CFG
    unconditional branch, which drops references, facts §1). ``content`` and no
    styles: DiffPortrait360 reference attention ``[K_l, K_c]``. With styles:
    Style Fusion Attention with key scale ``tau`` (a float, a ``{layer: τ}``
    dict with missing layers at 1.0, or a function of the layer name);
    ``pairing`` and ``mask_mode`` as in :func:`~.fusion.style_fusion_attention`.
    """

    content: Optional[Bank] = None
    styles: List[StyleEntry] = field(default_factory=list)
    tau: TauSpec = 1.0
    pairing: str = "paper"
    mask_mode: str = "paper"
    enabled: bool = True
    _cache: Dict[str, tuple] = field(default_factory=dict, repr=False)

    def set_references(self, content: Optional[Bank], styles: Sequence[StyleEntry] = ()) -> None:
        """Install new reference features (once per denoising step) and drop cached projections."""
        self.content = content
        self.styles = list(styles)
        self._cache.clear()

    def clear(self) -> None:
        self.set_references(None, ())

    def tau_for(self, name: str) -> float:
        if callable(self.tau):
            return float(self.tau(name))
        if isinstance(self.tau, dict):
            return float(self.tau.get(name, 1.0))
        return float(self.tau)

    def projected(self, name: str, attn: nn.Module):
        """K/V of the references through this layer's W_K/W_V, cached for the step.

        Reference features do not depend on the view, so every window of views
        in a step reuses one projection.
        """
        if name in self._cache:
            return self._cache[name]
        k_c = v_c = None
        if self.content is not None:
            k_c, v_c = _project(attn, self.content[name])
        styles = []
        for entry in self.styles:
            keys, values = zip(*(_project(attn, bank[name]) for bank in entry.banks))
            weights = entry.weights if entry.weights is not None else [1.0 / len(keys)] * len(keys)
            if len(keys) == 1 and entry.weights is None:
                k_s, v_s = keys[0], values[0]
            else:
                k_s, v_s = blend_styles(list(keys), weights), blend_styles(list(values), weights)
            mask = None
            if entry.mask is not None:
                mask = mask_to_tokens(entry.mask, k_s.shape[1])  # float32: half precision breaks Σm ≤ 1
            styles.append((k_s, v_s, mask))
        self._cache[name] = (k_c, v_c, styles)
        return self._cache[name]


def mask_to_tokens(mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Image-space mask ``[R, H, W]`` (one plane per reference view) → ``[1, R·h·w]``.

    Each plane is area-resized to the layer's token grid (h·w = num_tokens / R,
    same aspect as the mask) so a token's value is the fraction of its pixels
    selected; planes are concatenated in reference order (front, back).
    """
    if mask.ndim != 3:
        raise ValueError(f"style mask must be [views, H, W], got {tuple(mask.shape)}")
    views, height, width = mask.shape
    if num_tokens % views:
        raise ValueError(f"{num_tokens} reference tokens cannot be split over {views} mask planes")
    per_view = num_tokens // views
    scale = math.sqrt(height * width / per_view)
    h, w = round(height / scale), round(width / scale)
    if h * w != per_view or abs(h / w - height / width) > 0.02 * height / width:
        raise ValueError(
            f"style mask {height}x{width} does not match a {per_view}-token layer; masks must have the "
            "reference image's aspect ratio"
        )
    small = F.interpolate(mask[:, None].float(), size=(h, w), mode="area")
    return small.reshape(1, views * h * w).clamp(0, 1)


class StyleFusionProcessor:
    """Main-UNet ``attn1``: latent queries over latent, content and style keys (§3.3, §3.5)."""

    def __init__(self, state: FusionState, name: str):
        self.state = state
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        _check_self_attention(attn, hidden_states, encoder_hidden_states)
        state = self.state
        q = attn.to_q(hidden_states)
        k_l, v_l = _project(attn, hidden_states)
        k_c = v_c = None
        styles = []
        if state.enabled and (state.content is not None or state.styles):
            k_c, v_c, styles = state.projected(self.name, attn)
        tau = state.tau_for(self.name)
        if not styles:
            out = style_fusion_attention(q, k_l, v_l, k_c, v_c, None, None, heads=attn.heads)
        elif len(styles) == 1:
            k_s, v_s, mask = styles[0]
            out = style_fusion_attention(
                q, k_l, v_l, k_c, v_c, k_s, v_s, heads=attn.heads, tau=tau, style_mask=mask,
                pairing=state.pairing, mask_mode=state.mask_mode,
            )
        else:
            out = multi_style_fusion_attention(
                q, k_l, v_l, k_c, v_c, styles, heads=attn.heads, tau=tau, pairing=state.pairing,
                mask_mode=state.mask_mode,
            )
        return _finish(attn, out, hidden_states)


def install_bank_writers(unet: nn.Module, bank: ReferenceBank) -> List[str]:
    """Give every ``attn1`` of a reference UNet a bank writer; returns the layer names."""
    names = self_attention_names(unet)
    _set_processors(unet, {n: BankWriterProcessor(bank, n) for n in names})
    return names


def install_fusion_readers(unet: nn.Module, state: FusionState) -> List[str]:
    """Give every ``attn1`` of the main UNet a Style Fusion reader; returns the layer names."""
    names = self_attention_names(unet)
    _set_processors(unet, {n: StyleFusionProcessor(state, n) for n in names})
    return names


def _set_processors(unet: nn.Module, by_name: Dict[str, object]) -> None:
    modules = dict(unet.named_modules())
    for name, processor in by_name.items():
        modules[name].set_processor(processor)
