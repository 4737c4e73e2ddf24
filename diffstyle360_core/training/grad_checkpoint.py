"""Gradient checkpointing for our own UNet walk (``unet_walk.walk_unet``).

diffusers' ``enable_gradient_checkpointing`` acts inside the stock block
forwards, which our walk does not call, so the regions are set here, at the
granularity the walk calls modules:

* main UNet: every ResNet block, every transformer block (``Transformer2DModel``:
  Style Fusion self-attention, text cross-attention, feed-forward) of the
  encoder, middle and decoder;
* every view-consistency module;
* each *trainable* appearance module as one region (its activations for the
  four reference images are recomputed in the backward pass).

Only activations are dropped; gradients are unchanged (tested against a run
without checkpointing). The frozen content appearance module and the pose
ControlNet build no autograd graph and need nothing. The Style Fusion layers
hold the reference slots of the call in flight only while it runs; they are
empty again when the backward pass recomputes a block, so each region
re-installs the slots it saw (``context_fn`` of ``torch.utils.checkpoint``).
Regions run normally when autograd is off (previews, inference).
"""

from __future__ import annotations

import contextlib
import types
from typing import List

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .recipe import trainable_modules

_MARK = "_diffstyle360_checkpointed"
_CONTEXT = "_diffstyle360_checkpoint_context"


def _fusion_context(model):
    """context_fn: forward runs as is; the recompute sees the reference slots the forward's readers held."""
    slot = model.fusion
    snapshot = slot.snapshot()

    @contextlib.contextmanager
    def recompute():
        previous = slot.snapshot()
        slot.restore(snapshot)
        try:
            yield
        finally:
            slot.restore(previous)

    return contextlib.nullcontext(), recompute()


def _checkpointed_forward(self, *args, **kwargs):
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    context_fn = getattr(self, _CONTEXT, None)
    extra = {"context_fn": context_fn} if context_fn is not None else {}
    return checkpoint(forward, self, *args, use_reentrant=False, **extra, **kwargs)


def _wrap(module: nn.Module, context_fn=None) -> None:
    if getattr(module, _MARK, False):
        return
    # A bound method as instance attribute: parameter names and state_dict are unchanged, and a
    # deepcopy of the module rebinds it to the copy.
    module.forward = types.MethodType(_checkpointed_forward, module)
    setattr(module, _MARK, True)
    if context_fn is not None:
        setattr(module, _CONTEXT, context_fn)


def _unet_regions(unet: nn.Module):
    resnets, attentions = [], []
    for block in list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks):
        resnets += list(block.resnets)
        attentions += list(getattr(block, "attentions", None) or [])
    return resnets, attentions


def enable_gradient_checkpointing(model, mode: str = "style_module") -> List[str]:
    """Install the regions listed in the module docstring; returns their names (for logs/tests)."""
    names: List[str] = []
    lookup = {id(m): n for n, m in model.named_modules()}
    resnets, attentions = _unet_regions(model.unet)
    for module in resnets:
        _wrap(module)
    for module in attentions:
        _wrap(module, context_fn=lambda: _fusion_context(model))
    names += [lookup[id(m)] for m in resnets + attentions]
    for part in ("down", "up"):
        for module in model.temporal[part]:
            _wrap(module)
            names.append(lookup[id(module)])
    appearance = trainable_modules(model, mode)[0]
    _wrap(appearance)
    names.append(lookup[id(appearance)])
    return names


def disable_gradient_checkpointing(model) -> None:
    for module in model.modules():
        if getattr(module, _MARK, False):
            del module.forward
            delattr(module, _MARK)
            if hasattr(module, _CONTEXT):
                delattr(module, _CONTEXT)
