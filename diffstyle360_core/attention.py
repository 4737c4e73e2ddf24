"""The two attention processors that connect the appearance modules to the main UNet.

DiffPortrait360 (facts §2): every self-attention (``attn1``) of the reference UNet
*writes* its post-norm1 hidden states into a bank; the matching ``attn1`` of the
main UNet *reads* them and attends over ``[self | front | back]`` tokens using its
own W_K / W_V. DiffStyle360 (§3.3) extends the read side to Style Fusion
Attention. Layers are paired by diffusers layer name (e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn1``), never by list order.

What a read processor does comes from the :class:`FusionCall` of the denoising
step in flight (references, τ, masks, blend weights), bound for each forward of
that step and removed afterwards: no setting outlives a forward, and two
pipelines never share one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from .fusion import ASPECT_TOL, ReferenceKV, attend_with_references, blend_styles, reference_attention_inputs
from .options import FusionSettings

Bank = Dict[str, torch.Tensor]


def self_attention_names(unet: nn.Module) -> List[str]:
    """Names of the self-attention layers (``...attn1``) in forward order (down, mid, up)."""
    names = [name for name, _ in unet.named_modules() if name.endswith("attn1")]
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: stage.get(n.split(".")[0], 3))


def _project(attn: nn.Module, hidden: torch.Tensor):
    return attn.to_k(hidden), attn.to_v(hidden)


def _finish(attn: nn.Module, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection of a fused attention, as diffusers' ``AttnProcessor2_0`` ends."""
    out = attn.to_out[1](attn.to_out[0](out))
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


class ReferenceBank:
    """The bank writers of one reference UNet; :attr:`features` gathers what they recorded.

    Each writer keeps its own capture (an attribute, not a shared dict keyed by
    layer name), so a compiled transformer block serves every layer of a shape.
    """

    def __init__(self):
        self.writers: List["BankWriterProcessor"] = []
        self.recording = False

    @property
    def features(self) -> Bank:
        """``{layer name: hidden states}`` recorded by the last forward, in forward order."""
        return {w.name: w.captured for w in self.writers if w.captured is not None}

    def clear(self) -> None:
        for writer in self.writers:
            writer.captured = None


class BankWriterProcessor:
    """Reference-UNet ``attn1``: records the post-norm1 input, then attends as usual (diffusers' processor)."""

    def __init__(self, bank: ReferenceBank, name: str):
        self.bank = bank
        self.name = name
        self.captured: Optional[torch.Tensor] = None
        self.plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        _check_self_attention(attn, hidden_states, encoder_hidden_states)
        if self.bank.recording:
            self.captured = hidden_states
        return self.plain(attn, hidden_states, None, attention_mask, temb)


@dataclass
class StyleEntry:
    """One style region: a bank (or several banks blended with ``weights``) and a mask.

    ``banks`` hold the style appearance features F_s (front+back tokens).
    ``weights`` are the interpolation weights of §4 (α for two styles:
    ``(1-α, α)``). ``mask`` is the local-stylization mask in image space,
    ``[R, H, W]`` with one plane per reference view (front, back), values in
    [0, 1], already validated by the caller; None means stylize everywhere.
    """

    banks: List[Bank]
    weights: Optional[Sequence[float]] = None
    mask: Optional[torch.Tensor] = None


@dataclass
class FusionCall:
    """What the main UNet's ``attn1`` layers attend to during one denoising step (never stored on the model).

    One per step, because the references depend on t but not on the view: every
    denoiser forward of the step (each batch of view windows) is handed the same
    one, and each layer's reference slots are built on first use and cached on
    it. ``content`` None: stock self-attention. ``content`` and no styles:
    DiffPortrait360 reference attention ``[K_l, K_c]``. With styles: Style
    Fusion Attention with ``settings`` (τ, pairing, mask mode).
    """

    content: Optional[Bank] = None
    styles: List[StyleEntry] = field(default_factory=list)
    settings: FusionSettings = field(default_factory=FusionSettings)
    _cache: Dict[str, Optional[ReferenceKV]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.settings._table:  # checked settings carry their τ table: validate only unchecked ones
            self.settings = self.settings.checked()

    def reference_kv(self, name: str, attn: nn.Module) -> Optional[ReferenceKV]:
        """Layer ``name``'s reference slots (K/V after the latent tokens), cached for this call.

        The references go through this layer's W_K/W_V, styles are blended and
        masked, and AdaIN / τ / pairing are applied here, once per denoising step:
        none of it depends on the latents.
        """
        if name in self._cache:
            return self._cache[name]
        k_c = v_c = None
        if self.content is not None:
            k_c, v_c = _project(attn, self.content[name])
        styles = []
        for entry in self.styles:
            keys, values = zip(*(_project(attn, bank[name]) for bank in entry.banks))
            if len(keys) == 1 and entry.weights is None:
                k_s, v_s = keys[0], values[0]
            else:
                weights = entry.weights if entry.weights is not None else [1.0 / len(keys)] * len(keys)
                k_s, v_s = blend_styles(list(keys), weights), blend_styles(list(values), weights)
            mask = None
            if entry.mask is not None:
                mask = mask_to_tokens(entry.mask, k_s.shape[1])  # float32: half precision breaks Σm ≤ 1
            styles.append((k_s, v_s, mask))
        settings = self.settings
        self._cache[name] = reference_attention_inputs(
            k_c, v_c, styles, tau=settings.tau_for(name), pairing=settings.pairing,
            mask_mode=settings.mask_mode, trusted_masks=True,  # dtype: the projections' (the layer's compute dtype)
        )
        return self._cache[name]


class FusionSlot:
    """Hands the call in flight to the main UNet's readers, for one forward (``predict_noise``).

    :meth:`bind` gives every reader its layer's reference slots as plain tensors
    (``reader.inputs``), so the attention layers hold no Python logic that a
    compiled block would have to guard on; :meth:`release` empties them again.
    """

    def __init__(self):
        self.call: Optional[FusionCall] = None
        self.readers: List[tuple] = []  # (layer name, attention module, reader), set by install_fusion_readers

    def bind(self, call: Optional[FusionCall]) -> None:
        self.call = call
        for name, attn, reader in self.readers:
            if attn.processor is not reader:  # another model over this UNet (weights.sharing_copy) ran last
                attn.processor = reader
            reader.inputs = call.reference_kv(name, attn) if call is not None else None

    def release(self) -> None:
        self.bind(None)

    def snapshot(self) -> Dict[str, Optional[ReferenceKV]]:
        """What each reader holds now (gradient checkpointing re-installs it for the recompute)."""
        return {name: reader.inputs for name, _, reader in self.readers}

    def restore(self, inputs: Dict[str, Optional[ReferenceKV]]) -> None:
        for name, _, reader in self.readers:
            reader.inputs = inputs.get(name)


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
    if h * w != per_view or abs(h / w - height / width) > ASPECT_TOL * height / width:
        raise ValueError(
            f"style mask {height}x{width} does not match a {per_view}-token layer; masks must have the "
            "reference image's aspect ratio"
        )
    small = F.interpolate(mask[:, None].float(), size=(h, w), mode="area")
    return small.reshape(1, views * h * w).clamp(0, 1)


class StyleFusionProcessor:
    """Main-UNet ``attn1``: latent queries over latent, content and style keys (§3.3, §3.5).

    ``inputs`` (the layer's :class:`~.fusion.ReferenceKV`, bound by
    :class:`FusionSlot` for one forward) is all it reads: None is stock
    self-attention (the CFG unconditional branch).
    """

    def __init__(self, name: str):
        self.name = name
        self.inputs: Optional[ReferenceKV] = None
        self.plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        _check_self_attention(attn, hidden_states, encoder_hidden_states)
        refs = self.inputs
        if refs is None:
            return self.plain(attn, hidden_states, None, attention_mask, temb)
        q = attn.to_q(hidden_states)
        k_l, v_l = _project(attn, hidden_states)
        out = attend_with_references(q, k_l, v_l, refs, attn.heads)
        return _finish(attn, out, hidden_states)


def install_bank_writers(unet: nn.Module, bank: ReferenceBank) -> List[str]:
    """Give every ``attn1`` of a reference UNet a bank writer; returns the layer names."""
    names = self_attention_names(unet)
    bank.writers = [BankWriterProcessor(bank, n) for n in names]
    _set_processors(unet, dict(zip(names, bank.writers)))
    return names


def install_fusion_readers(unet: nn.Module, slot: FusionSlot) -> List[str]:
    """Give every ``attn1`` of the main UNet a Style Fusion reader; returns the layer names."""
    names = self_attention_names(unet)
    modules = dict(unet.named_modules())
    slot.readers = [(n, modules[n], StyleFusionProcessor(n)) for n in names]
    _set_processors(unet, {n: reader for n, _, reader in slot.readers})
    return names


def _set_processors(unet: nn.Module, by_name: Dict[str, object]) -> None:
    modules = dict(unet.named_modules())
    for name, processor in by_name.items():
        modules[name].set_processor(processor)
