"""Block-by-block forward of a diffusers ``UNet2DConditionModel``.

Why our own walk instead of ``unet(...)``: DiffPortrait360 inserts view-consistency
modules *between* the sub-layers of the SD1.5 blocks (after each resnet+attention
pair of the encoder, after every decoder layer and, for decoder blocks with an
upsampler, after the upsampler; facts §4), adds the pose ControlNet residuals to
the skips (facts §3), and its reference UNet needs no output head (facts §2).
With none of these the walk is numerically the stock ``UNet2DConditionModel``
forward (tested).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn


@dataclass
class ControlResiduals:
    """Pose ControlNet output: one residual per encoder skip plus the middle one."""

    down: Sequence[torch.Tensor]
    mid: torch.Tensor


@dataclass
class CompiledForward:
    """A whole forward compiled as one graph (``acceleration.compile_model(scope="full")``).

    ``cuda_graphs``: the graph replays from a CUDA graph, whose output memory
    the next replay reuses, so :func:`run_forward` copies outputs out of it.
    """

    fn: Callable
    cuda_graphs: bool = False


#: The compile key of the model whose call is running (innermost last; None: eager). Compiled variants live
#: on the (possibly shared) modules, keyed by compile settings; which one runs is the running model's choice,
#: so two model objects over the same modules keep their own (``acceleration.compile_model``).
_ACTIVE_COMPILE: List[Optional[tuple]] = [None]


def compile_key_of(model: nn.Module) -> Optional[tuple]:
    """The compile settings ``model`` itself was given (``acceleration.compile_model``), or None."""
    record = model.__dict__.get("_ds360_compile")
    return None if record is None else record.key


@contextlib.contextmanager
def compiling_as(key: Optional[tuple]) -> Iterator[None]:
    """Run what follows with the compiled variants made for ``key`` (None: eager)."""
    _ACTIVE_COMPILE.append(key)
    try:
        yield
    finally:
        _ACTIVE_COMPILE.pop()


def active_compile_key() -> Optional[tuple]:
    return _ACTIVE_COMPILE[-1]


def run_forward(compiled: Dict[tuple, CompiledForward], eager: Callable, *args):
    """``eager(*args)``, or the whole-call graph compiled for the running model's settings (same result)."""
    compiled = compiled.get(active_compile_key())
    if compiled is None:
        return eager(*args)
    if compiled.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()  # earlier outputs were copied out: their memory may be reused
    out = compiled.fn(*args)
    return out.clone() if compiled.cuda_graphs and torch.is_tensor(out) else out


def timestep_tensor(timestep, device: torch.device) -> torch.Tensor:
    """``timestep`` as an int64 tensor on ``device`` (a Python int would make compiled graphs specialise per step)."""
    if torch.is_tensor(timestep):
        return timestep.to(device)
    return torch.tensor([timestep], dtype=torch.int64, device=device)


def time_embedding(unet: nn.Module, sample: torch.Tensor, timestep) -> torch.Tensor:
    """The UNet's timestep embedding for a batch: diffusers' ``get_time_embed`` then ``time_embedding``.

    SD1.5 has no class or augmentation embedding, so this is all of the stock
    forward's embedding; ``timestep`` (scalar or per sample) goes in as a tensor.
    """
    emb = unet.time_embedding(unet.get_time_embed(sample, timestep_tensor(timestep, sample.device)))
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb


def _attend(attn: nn.Module, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return attn(hidden, encoder_hidden_states=context, return_dict=False)[0]


def _temporal(modules, index: int, hidden: torch.Tensor, num_views: Optional[int]) -> torch.Tensor:
    if modules is None:
        return hidden
    return modules[index](hidden, num_views=num_views)


def walk_unet(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep,
    context: torch.Tensor,
    *,
    temporal_down: Optional[nn.ModuleList] = None,
    temporal_up: Optional[nn.ModuleList] = None,
    num_views: Optional[int] = None,
    control: Optional[ControlResiduals] = None,
    output_head: bool = True,
) -> Optional[torch.Tensor]:
    """Run ``unet`` on ``sample`` [B, 4, h, w] with DiffPortrait360's insertions.

    ``temporal_down[i]`` runs after encoder layer i (LDM ``input_blocks`` 1, 2, 4, 5,
    7, 8, 10, 11 for SD1.5), before the skip is stored, so skips carry its output.
    ``temporal_up[j]`` runs after decoder layer j (LDM ``output_blocks`` j), after
    the upsampler when that layer ends a block that has one. ``control`` residuals
    are added to the skips and the middle output (scale 1). With
    ``output_head=False`` (the reference UNet) nothing past the last decoder layer
    runs and ``None`` is returned: only the attention banks written on the way
    matter.
    """
    if context.shape[0] == 1 and sample.shape[0] > 1:
        context = context.expand(sample.shape[0], -1, -1)
    emb = time_embedding(unet, sample, timestep)
    hidden = unet.conv_in(sample)
    skips = [hidden]
    layer = 0
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            hidden = resnet(hidden, emb)
            if attentions is not None:
                hidden = _attend(attentions[j], hidden, context)
            hidden = _temporal(temporal_down, layer, hidden, num_views)
            layer += 1
            skips.append(hidden)
        if block.downsamplers is not None:
            for down in block.downsamplers:
                hidden = down(hidden)
            skips.append(hidden)

    if control is not None:
        if len(control.down) != len(skips):
            raise ValueError(
                f"pose control gave {len(control.down)} skip residuals, the UNet has {len(skips)} skips"
            )
        skips = [s + r for s, r in zip(skips, control.down)]

    hidden = unet.mid_block(hidden, emb, encoder_hidden_states=context)
    if control is not None:
        hidden = hidden + control.mid

    layer = 0
    last_block = len(unet.up_blocks) - 1
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        n = len(block.resnets)
        upsample_size = None
        if b != last_block and skips[-n - 1].shape[2:] != tuple(s * 2 for s in hidden.shape[2:]):
            upsample_size = skips[-n - 1].shape[2:]
        for j, resnet in enumerate(block.resnets):
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = resnet(hidden, emb)
            if attentions is not None:
                hidden = _attend(attentions[j], hidden, context)
            if j == n - 1 and block.upsamplers is not None:
                for up in block.upsamplers:
                    hidden = up(hidden, upsample_size)
            hidden = _temporal(temporal_up, layer, hidden, num_views)
            layer += 1

    if not output_head:
        return None
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
