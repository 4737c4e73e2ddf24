"""The fine-tuning recipe (§3.2, §3.4, supplementary §7.1): what trains, how it starts, the loss.

* ``style_module`` (the paper's method): the Style Appearance Module is added as
  a copy of the frozen Content Appearance Module (§3.2) and trained together
  with the view-consistency modules; the main UNet, content module, pose
  ControlNet and VAE are frozen (``requires_grad`` False, eval mode).
* ``finetune_appearance`` (Table 2, "+ Fine-tuning"): no style module; the one
  shared appearance module sees content and style and is trained together with
  the view-consistency modules.

One step (:class:`StyleTrainingStep`): x₀ = VAE latents (posterior sampled, as
DiffPortrait360 does, facts §1) of the ground-truth stylized views; one t for
the step (the reference modules see the same t as the main UNet, facts §2); x_t
from diffusers' ``DDPMScheduler.add_noise`` on the model's schedule
(scaled-linear betas, ε prediction); references = content front+back through
the content module and style front+back through the style module; pose hints =
the target views' condition images; the views run through the
view-consistency modules in windows of 8 (facts §4); loss = MSE(ε̂, ε). With
probability ``condition_dropout`` the references *and* the pose control are
dropped together, which is exactly the unconditional branch CFG runs at
inference (facts §1).

DiffPortrait360 draws one t per frame in its multi-view stage (facts §6); here
all views of a step share one t, as at inference, so the reference modules run
once per step instead of once per view.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import FusionCall, StyleEntry
from ..options import FusionSettings
from .config import ConfigError, TrainConfig


# ----------------------------------------------------------------------------------------------
# the one place that knows the denoiser's call signature
# ----------------------------------------------------------------------------------------------
def predict(model, noisy: torch.Tensor, timestep, hints: Optional[torch.Tensor], banks, settings: FusionSettings,
            num_views: int) -> torch.Tensor:
    """ε̂ for ``noisy`` [V,4,h,w]; ``banks`` = (content bank, [style bank]) or None (CFG's unconditional branch)."""
    if banks is None:
        return model.predict_noise(noisy, timestep, None, num_views=num_views, references=None)
    content, styles = banks
    call = FusionCall(content=content, styles=[StyleEntry(banks=[bank]) for bank in styles], settings=settings)
    return model.predict_noise(noisy, timestep, hints, num_views=num_views, references=call)


# ----------------------------------------------------------------------------------------------
# what trains
# ----------------------------------------------------------------------------------------------
def trainable_modules(model, mode: str) -> List[nn.Module]:
    if mode == "style_module":
        return [model.style_appearance, model.temporal]
    return [model.appearance, model.temporal]


def frozen_modules(model, mode: str) -> List[nn.Module]:
    frozen = [model.unet, model.pose_controlnet, model.vae]
    if mode == "style_module":
        frozen.append(model.appearance)
    return frozen


def prepare_model(model, mode: str = "style_module") -> List[nn.Parameter]:
    """Freeze the model, add/initialise the module the recipe trains, and return the trainable parameters.

    ``style_module``: ``model.add_style_module()`` (a copy of the content module,
    §3.2; a style module already loaded with the weights is replaced). Then the
    style module and the view-consistency modules train. ``finetune_appearance``:
    any style module is removed (training-free layout) and the shared appearance
    module and the view-consistency modules train.
    """
    if getattr(model, "temporal", None) is None:
        raise ConfigError(
            "the weights are a back-view model (no view-consistency modules); train on the main model "
            "(the weight set's main/ folder)"
        )
    model.requires_grad_(False)
    model.eval()
    if mode == "style_module":
        model.add_style_module()
    elif mode == "finetune_appearance":
        model.style_appearance = None
    else:
        raise ConfigError(f"mode must be 'style_module' or 'finetune_appearance', got {mode!r}")
    params: List[nn.Parameter] = []
    for module in trainable_modules(model, mode):
        module.requires_grad_(True)
        module.train()
        params += [p for p in module.parameters()]
    return params


def cast_frozen(model, mode: str, dtype: torch.dtype) -> None:
    """Keep the frozen parts in the mixed-precision dtype (they get no optimizer state); trainables stay fp32."""
    if dtype == torch.float32:
        return
    for module in frozen_modules(model, mode):
        nn.Module.to(module, dtype)  # plain cast (diffusers' ModelMixin.to warns about from_pretrained dtypes)


# ----------------------------------------------------------------------------------------------
# noise schedule (the model's own: scaled-linear betas, ε prediction)
# ----------------------------------------------------------------------------------------------
def noise_scheduler(schedule):
    """diffusers ``DDPMScheduler`` configured from the model's :class:`~..config.ScheduleConfig`."""
    from diffusers import DDPMScheduler

    if schedule.prediction != "epsilon":
        raise ConfigError(f"training supports ε-prediction models only; this model predicts {schedule.prediction!r}")
    return DDPMScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def effective_window(model, config: TrainConfig) -> int:
    window = config.window if config.window is not None else model.config.temporal.window
    window = min(window, config.views_per_sample)
    if window > model.config.temporal.max_views:
        raise ConfigError(f"window {window} exceeds the view-consistency modules' {model.config.temporal.max_views} "
                          "positions")
    if config.views_per_sample % window:
        raise ConfigError(
            f"views_per_sample ({config.views_per_sample}) must be a multiple of the window ({window}): the views "
            "run through the view-consistency modules in whole windows"
        )
    return window


# ----------------------------------------------------------------------------------------------
# one step
# ----------------------------------------------------------------------------------------------
class StyleTrainingStep(nn.Module):
    """``forward(latents…, t, noise, drop) -> loss``; wraps the whole model so ``accelerate``/DDP see one module.

    Inputs are already VAE-encoded (:func:`encode_batch`) and the randomness
    already drawn (:func:`draw_randomness`), so a step is a pure function of its
    inputs and the weights.
    """

    def __init__(self, model, config: TrainConfig):
        super().__init__()
        self.model = model
        self.settings = FusionSettings(tau=config.tau, pairing=config.pairing, mask_mode=config.mask_mode).checked()
        self.window = effective_window(model, config)
        self.scheduler = noise_scheduler(model.config.schedule)

    def noisy(self, target: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        t = torch.full((target.shape[0],), int(timestep), dtype=torch.long)
        return self.scheduler.add_noise(target.float(), noise.float(), t.to(target.device))

    def forward(self, content: torch.Tensor, style: torch.Tensor, target: torch.Tensor, hints: torch.Tensor,
                timestep: int, noise: torch.Tensor, drop: bool = False) -> torch.Tensor:
        """MSE(ε̂, ε) over the target views. ``content``/``style`` [2,4,h,w] latents (front, back),
        ``target`` [V,4,h,w] latents, ``hints`` [V,3,H,W], ``noise`` like ``target``."""
        model = self.model
        x_t = self.noisy(target, noise, timestep)
        banks = None if drop else model.reference_banks(content, [style], timestep)
        eps = predict(model, x_t, timestep, hints, banks, self.settings, self.window)
        return F.mse_loss(eps.float(), noise.float())


@torch.no_grad()
def encode_batch(model, item: dict, generator: torch.Generator, device) -> Tuple[torch.Tensor, ...]:
    """VAE latents (posterior sampled with ``generator``) of a dataset item: content, style, target; + hints."""
    images = torch.cat([item["content"], item["style"], item["target"]]).to(device)
    latents = model.encode(images, generator).float()
    return latents[:2], latents[2:4], latents[4:], item["cameras"].to(device)


def draw_randomness(generator: torch.Generator, shape: Sequence[int], num_timesteps: int,
                    dropout: float) -> Tuple[int, torch.Tensor, bool]:
    """(t, ε, drop) for one step, all from ``generator`` (CPU), so a step is reproducible on any device."""
    t = int(torch.randint(0, num_timesteps, (1,), generator=generator))
    noise = torch.randn(tuple(shape), generator=generator)
    drop = bool(torch.rand((1,), generator=generator) < dropout) if dropout > 0 else False
    return t, noise, drop


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """CPU generator for one micro-step, a function of (seed, step, micro, rank) only (resume-exact)."""
    key = (int(seed) * 1_000_003 + int(step)) * 131 + int(micro) * 7 + int(rank)
    return torch.Generator().manual_seed(key % (2**63))
