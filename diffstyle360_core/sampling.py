"""Denoising with DiffPortrait360's guidance, run step-major over windows of views.

The schedulers are diffusers' own, configured from the model's schedule.
``"ddim"`` reproduces the official sampler exactly (facts §1): scaled-linear
betas 0.00085–0.012 over 1000 steps, ε prediction, DDIM timesteps 1, 21, …, 981
for 50 steps (``timestep_spacing="leading"``, ``steps_offset=1``), ᾱ of the last
step = ᾱ₀ (``set_alpha_to_one=False``), η = 0.5, CFG 3 where the unconditional
branch drops the references *and* the pose control. ``"dpmpp_2m"``, ``"unipc"``
and ``"euler"`` are faster solvers on the same schedule (not the official path).

Step-major: at every step the reference features are computed once (they
depend on t, not on the view), then every window of views is denoised and the
ε of views covered by several windows is averaged. The latents stay float32
between steps (the official x_t is float32 under autocast). Noise is drawn on
the CPU from per-row generators, so results depend neither on how windows are
batched nor on the device.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, List, Optional, Sequence

import torch

from .config import ScheduleConfig
from .options import SCHEDULERS, WINDOW_MODES, InputError, check_choice

StepHook = Callable[..., None]  # on_step(step, total, x, denoised)


# --------------------------------------------------------------------------- #
# Seeds: one rule for every derived noise stream
# --------------------------------------------------------------------------- #
#: Sub-seeds from :func:`mix_seed` lie in ``[0, SEED_MODULUS)``, which every ``torch.Generator`` accepts.
SEED_MODULUS = 2**63
# A prime multiplier. Changing it would change every derived stream (seeds would no
# longer reproduce earlier results), so it is fixed.
_SEED_MULTIPLIER = 1_000_003


def mix_seed(seed: int, *parts: int) -> int:
    """One rule for deriving sub-seeds: ``h = (h * 1_000_003 + part) mod 2**63`` for each part.

    Folds integer ``parts`` (a CRC of a name, an image digest, an index) into
    ``seed`` so each gets its own reproducible generator stream. Integers only
    (Python or numpy); any seed of ComfyUI's range ``0 … 2**64 - 1`` gives a
    value in ``[0, 2**63)``; no parts gives ``seed mod 2**63``. Deterministic
    across runs and platforms (no ``hash()``).
    """
    h = operator.index(seed) % SEED_MODULUS
    for part in parts:
        h = (h * _SEED_MULTIPLIER + operator.index(part)) % SEED_MODULUS
    return h


def _scheduler_config(schedule: ScheduleConfig) -> dict:
    return dict(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule="scaled_linear",
        prediction_type=schedule.prediction,
        timestep_spacing="leading",
        steps_offset=1,
    )


def make_scheduler(name: str, schedule: ScheduleConfig, steps: int):
    """A configured diffusers scheduler with its ``steps`` timesteps set (one instance per denoising run)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

    check_choice("scheduler", name, SCHEDULERS)
    config = _scheduler_config(schedule)
    if name == "ddim":
        scheduler = DDIMScheduler(**config, clip_sample=False, set_alpha_to_one=False)
    elif name == "dpmpp_2m":
        scheduler = DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2)
    elif name == "unipc":
        scheduler = UniPCMultistepScheduler(**config)
    else:
        scheduler = EulerDiscreteScheduler(**config)
    scheduler.set_timesteps(steps)
    return scheduler


def alphas_cumprod(schedule: ScheduleConfig) -> torch.Tensor:
    """ᾱ_t of the model's schedule, as the schedulers compute it."""
    return make_scheduler("ddim", schedule, 1).alphas_cumprod


def guide_frame_noise(guide_latents: torch.Tensor, noise: torch.Tensor, schedule: ScheduleConfig) -> torch.Tensor:
    """3D-aware initial noise (facts §3): x_T = √ᾱ_{T-1}·z_guide + √(1-ᾱ_{T-1})·ε (≈ 0.068 z + 0.998 ε)."""
    a = float(alphas_cumprod(schedule)[-1])
    return math.sqrt(a) * guide_latents + math.sqrt(1 - a) * noise


def view_windows(num_views: int, window: int, mode: str = "independent", overlap: int = 4) -> List[List[int]]:
    """Which views are denoised together through the view-consistency modules.

    ``independent``: consecutive chunks of ``window`` views with no overlap — the
    official 4 × 8 chunks for 32 views (the last chunk is shorter when N is not a
    multiple). ``circular``: windows of ``window`` views every ``window - overlap``
    views, indices taken mod N, so the last views share a window with the first
    and the 360° loop closes; ε of a view is averaged over its windows.
    """
    if num_views < 1:
        raise InputError(f"views must be >= 1, got {num_views}")
    if window < 1:
        raise InputError(f"window must be >= 1, got {window}")
    check_choice("window_mode", mode, WINDOW_MODES)
    if not 0 <= overlap < window:
        raise InputError(f"overlap must be in [0, window-1] = [0, {window - 1}], got {overlap}")
    if num_views <= window:
        return [list(range(num_views))]
    if mode == "independent":
        return [list(range(s, min(s + window, num_views))) for s in range(0, num_views, window)]
    stride = window - overlap
    count = math.ceil(num_views / stride)
    return [[(s * stride + k) % num_views for k in range(window)] for s in range(count)]


def batch_windows(windows: Sequence[Sequence[int]], per_batch: int) -> List[List[List[int]]]:
    """Group windows of equal length into forward batches of at most ``per_batch`` windows."""
    if per_batch < 1:
        raise InputError(f"windows_per_batch must be >= 1, got {per_batch}")
    by_len = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(list(w))
    batches = []
    for group in by_len.values():
        batches += [group[i : i + per_batch] for i in range(0, len(group), per_batch)]
    return batches


def randn_rows(shape, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise [B, …] on the CPU, row i from ``generators[i]`` (or all rows from one)."""
    if len(generators) == 1:
        return torch.randn(shape, generator=generators[0], dtype=torch.float32)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for {shape[0]} rows")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators])


class _LoopState:
    """Tensors of a running loop, held in one place so an interrupt can drop them all."""

    x: Optional[torch.Tensor] = None
    eps: Optional[torch.Tensor] = None
    references = None


def denoise_views(
    model,
    latents: torch.Tensor,
    hints: Optional[torch.Tensor],
    scheduler,
    *,
    references_at: Callable[[int], object],
    generators: Sequence[torch.Generator],
    guidance: float = 3.0,
    eta: float = 0.0,
    windows: Optional[List[List[int]]] = None,
    windows_per_batch: int = 4,
    num_views_per_window: Optional[int] = None,
    on_step: Optional[StepHook] = None,
) -> torch.Tensor:
    """Run ``scheduler`` from ``latents`` [N,4,h,w] (x_T, unscaled) and return x_0 in float32.

    ``references_at(t)`` builds the :class:`~.attention.FusionCall` for timestep
    t (once per step). ``hints`` [N,3,H,W] are the pose conditions of the N
    views. ``guidance`` == 1 skips the unconditional branch. ``eta`` is DDIM's
    stochasticity (other schedulers are deterministic). ``on_step(step, total,
    x, denoised)`` runs after each step with CPU copies of x and of the scheduler's
    x_0 estimate (None for solvers that give none) (progress, previews, interrupt);
    an exception raised there propagates after the loop's tensors are released.
    """
    n = latents.shape[0]
    windows = windows if windows is not None else [list(range(n))]
    batches = batch_windows(windows, windows_per_batch)
    counts = torch.zeros(n, dtype=torch.float32)
    for w in windows:
        counts[torch.tensor(w)] += 1
    if bool((counts == 0).any()):
        raise ValueError("some views are in no window")
    device = latents.device
    counts = counts.to(device).view(-1, 1, 1, 1)
    stochastic = scheduler.__class__.__name__ == "DDIMScheduler" and eta > 0
    groups = []  # (views per window, rows, their pose hints): fixed for the run
    for group in batches:
        rows = torch.tensor([v for w in group for v in w], device=device)
        hb = hints.index_select(0, rows.to(hints.device)) if hints is not None else None
        groups.append((len(group[0]) if num_views_per_window is None else num_views_per_window, rows, hb))
    state = _LoopState()
    state.x = latents.float() * float(scheduler.init_noise_sigma)
    total = len(scheduler.timesteps)
    model_in = idx = xb = hb = uncond = kwargs = out = denoised = None
    try:
        for step, t in enumerate(scheduler.timesteps):
            t_int = int(t)
            state.references = references_at(t_int)
            model_in = scheduler.scale_model_input(state.x, t)
            state.eps = torch.zeros(state.x.shape, dtype=torch.float32, device=device)
            for views, idx, hb in groups:
                xb = model_in.index_select(0, idx)
                eps = model.predict_noise(xb, t_int, hb, num_views=views, references=state.references).float()
                if guidance != 1.0:
                    uncond = model.predict_noise(xb, t_int, None, num_views=views, references=None).float()
                    eps = uncond + guidance * (eps - uncond)
                state.eps.index_add_(0, idx, eps)
                del eps, xb
            state.references = None
            kwargs = {}
            if stochastic:
                kwargs = dict(eta=eta, variance_noise=randn_rows(state.x.shape, generators).to(device))
            out = scheduler.step(state.eps / counts, t, state.x, **kwargs)
            state.x, state.eps = out.prev_sample.float(), None
            denoised = getattr(out, "pred_original_sample", None)
            out = None
            if on_step is not None:  # CPU copies: whatever the host keeps of them holds no GPU memory
                on_step(step + 1, total, state.x.detach().to("cpu", copy=True),
                        None if denoised is None else denoised.detach().float().to("cpu", copy=True))
            denoised = None
        return state.x
    finally:  # drop every device tensor this frame holds: a kept traceback must not pin GPU memory
        state.x = state.eps = state.references = None
        latents = hints = counts = groups = None  # noqa: F841
        model_in = idx = xb = hb = uncond = kwargs = out = denoised = None  # noqa: F841
