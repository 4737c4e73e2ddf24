"""DDIM with DiffPortrait360's guidance, run step-major over windows of views.

Defaults reproduce the official sampler (facts §1): scaled-linear betas
0.00085–0.012 over 1000 steps, ε prediction, uniform DDIM timesteps 1, 21, …, 981
for 50 steps, η = 0.5, CFG 3 where the unconditional branch drops the
references *and* the pose control.

Step-major: at every step the reference features are computed once (they
depend on t, not on the view), then every window of views is denoised and the
ε of views covered by several windows is averaged. Noise is drawn for all N
views from one CPU generator, so results do not depend on how windows are
batched or on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .config import ScheduleConfig

WINDOW_MODES = ("independent", "circular")


def alphas_cumprod(schedule: ScheduleConfig) -> torch.Tensor:
    """ᾱ_t of the LDM "linear" schedule: betas = linspace(√β₀, √β₁, T)² (float64)."""
    betas = torch.linspace(
        math.sqrt(schedule.beta_start), math.sqrt(schedule.beta_end), schedule.num_train_timesteps, dtype=torch.float64
    ) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass
class DDIMSchedule:
    """The DDIM sub-sequence and its coefficients, as LDM's ``make_ddim_*`` builds them."""

    timesteps: torch.Tensor  # ascending, int64
    alphas: torch.Tensor  # ᾱ at each timestep
    alphas_prev: torch.Tensor  # ᾱ of the previous (less noisy) step; ᾱ₀ for the first
    sigmas: torch.Tensor

    @classmethod
    def make(cls, schedule: ScheduleConfig, steps: int, eta: float) -> "DDIMSchedule":
        """Uniform timesteps ``range(0, T, T // steps) + 1``, cut to exactly ``steps``.

        Equal to LDM's "uniform" discretisation whenever ``steps`` divides T (the
        official 50 does); otherwise LDM would run one extra step and we keep the
        requested count (diffusers' "leading" spacing).
        """
        total = schedule.num_train_timesteps
        if not 1 <= steps <= total:
            raise ValueError(f"steps must be in [1, {total}], got {steps}")
        if not (0.0 <= eta <= 1.0):
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        stride = total // steps
        timesteps = torch.from_numpy(np.arange(0, total, stride)[:steps] + 1).long()
        acp = alphas_cumprod(schedule)
        alphas = acp[timesteps]
        alphas_prev = torch.cat([acp[:1], acp[timesteps[:-1]]])
        sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        return cls(timesteps, alphas, alphas_prev, sigmas)

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, x: torch.Tensor, eps: torch.Tensor, index: int, noise: Optional[torch.Tensor]) -> torch.Tensor:
        """x_t → x_{t_prev} (``index`` counts from the low-noise end), in float32 arithmetic."""
        a, a_prev, sigma = (float(v[index]) for v in (self.alphas, self.alphas_prev, self.sigmas))
        x32, e32 = x.float(), eps.float()
        pred_x0 = (x32 - math.sqrt(1 - a) * e32) / math.sqrt(a)
        out = math.sqrt(a_prev) * pred_x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * e32
        if sigma > 0 and noise is not None:
            out = out + sigma * noise.float()
        return out.to(x.dtype)


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
        raise ValueError(f"views must be >= 1, got {num_views}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if mode not in WINDOW_MODES:
        raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {mode!r}")
    if num_views <= window:
        return [list(range(num_views))]
    if mode == "independent":
        return [list(range(s, min(s + window, num_views))) for s in range(0, num_views, window)]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window-1] = [0, {window - 1}], got {overlap}")
    stride = window - overlap
    count = math.ceil(num_views / stride)
    return [[(s * stride + k) % num_views for k in range(window)] for s in range(count)]


def batch_windows(windows: Sequence[Sequence[int]], per_batch: int) -> List[List[List[int]]]:
    """Group windows of equal length into forward batches of at most ``per_batch`` windows."""
    if per_batch < 1:
        raise ValueError(f"windows_per_batch must be >= 1, got {per_batch}")
    by_len = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(list(w))
    batches = []
    for group in by_len.values():
        batches += [group[i : i + per_batch] for i in range(0, len(group), per_batch)]
    return batches


StepCallback = Callable[[int, int], None]


def denoise_views(
    model,
    latents: torch.Tensor,
    hints: Optional[torch.Tensor],
    schedule: DDIMSchedule,
    *,
    set_references: Callable[[torch.Tensor], None],
    generator: torch.Generator,
    guidance: float = 3.0,
    windows: Optional[List[List[int]]] = None,
    windows_per_batch: int = 4,
    num_views_per_window: Optional[int] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Run the DDIM loop on ``latents`` [N,4,h,w] (already x_T) and return x_0.

    ``set_references(t)`` installs the reference banks for timestep t (called once
    per step). ``hints`` [N,3,H,W] are the pose conditions of the N views.
    ``guidance`` == 1 skips the unconditional branch. ``callback(step, total)``
    runs after each step (progress, interrupt).
    """
    n = latents.shape[0]
    windows = windows if windows is not None else [list(range(n))]
    batches = batch_windows(windows, windows_per_batch)
    counts = torch.zeros(n, dtype=torch.float32)
    for w in windows:
        counts[torch.tensor(w)] += 1
    if bool((counts == 0).any()):
        raise ValueError("some views are in no window")
    x = latents
    total = len(schedule)
    for step in range(total):
        index = total - 1 - step
        t = int(schedule.timesteps[index])
        set_references(t)
        eps_sum = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for group in batches:
            idx = torch.tensor([v for w in group for v in w], device=x.device)
            xb = x.index_select(0, idx)
            hb = hints.index_select(0, idx.to(hints.device)) if hints is not None else None
            views = len(group[0]) if num_views_per_window is None else num_views_per_window
            eps = model.predict_noise(xb, t, hb, num_views=views, with_references=True)
            if guidance != 1.0:
                uncond = model.predict_noise(xb, t, None, num_views=views, with_references=False)
                eps = uncond + guidance * (eps - uncond)
            eps_sum.index_add_(0, idx, eps.float())
        eps = eps_sum / counts.to(x.device).view(-1, 1, 1, 1)
        noise = None
        if float(schedule.sigmas[index]) > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        x = schedule.step(x, eps.to(x.dtype), index, noise)
        if callback is not None:
            callback(step + 1, total)
    return x
