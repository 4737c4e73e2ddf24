"""DDIM schedule and step, view windows, step-major denoising loop."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from diffstyle360_core.config import ScheduleConfig
from diffstyle360_core.sampling import (
    DDIMSchedule,
    alphas_cumprod,
    batch_windows,
    denoise_views,
    guide_frame_noise,
    view_windows,
)


def test_official_timesteps_and_schedule():
    s = DDIMSchedule.make(ScheduleConfig(), 50, 0.5)
    assert s.timesteps.tolist() == list(range(1, 1000, 20))  # 1, 21, ..., 981 (facts §1)
    acp = alphas_cumprod(ScheduleConfig())
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(acp, torch.cumprod(1 - betas, 0), rtol=0, atol=0)
    assert float(s.alphas_prev[0]) == float(acp[0])


def test_ddim_step_matches_diffusers_scheduler():
    """Independent implementation: diffusers' DDIMScheduler configured like LDM's DDIM sampler."""
    eta = 0.5
    ours = DDIMSchedule.make(ScheduleConfig(), 50, eta)
    ref = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", clip_sample=False,
    )
    ref.set_timesteps(50)
    assert ref.timesteps.tolist() == ours.timesteps.flip(0).tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    for step, t in enumerate(ref.timesteps):
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        expect = ref.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        got = ours.step(x, eps, len(ours) - 1 - step, noise)
        assert torch.allclose(got.double(), expect, rtol=1e-5, atol=1e-5)
        x = expect


def test_guide_frame_noise_coefficients():
    z, e = torch.ones(1), torch.zeros(1)
    a = guide_frame_noise(z, e, ScheduleConfig())
    b = guide_frame_noise(e, z, ScheduleConfig())
    assert float(a) == pytest.approx(0.0683, abs=2e-4)  # facts §3: ≈ 0.0683·z + 0.9977·ε
    assert float(b) == pytest.approx(0.9977, abs=2e-4)


def test_independent_windows_are_the_official_chunks():
    assert view_windows(32, 8) == [list(range(s, s + 8)) for s in range(0, 32, 8)]
    assert view_windows(10, 8) == [list(range(8)), [8, 9]]
    assert view_windows(5, 8) == [list(range(5))]


def test_circular_windows_close_the_loop():
    for n, window, overlap in [(32, 8, 4), (12, 8, 2), (9, 4, 1)]:
        windows = view_windows(n, window, "circular", overlap)
        covered = sorted({v for w in windows for v in w})
        assert covered == list(range(n))
        assert all(len(w) == window for w in windows)
        # some window holds both the last and the first view: the 360° seam is denoised jointly
        assert any(n - 1 in w and 0 in w for w in windows)
        # consecutive windows share `overlap` views
        assert len(set(windows[0]) & set(windows[1])) >= overlap
    with pytest.raises(ValueError, match="overlap"):
        view_windows(32, 8, "circular", 8)
    with pytest.raises(ValueError, match="window_mode"):
        view_windows(32, 8, "sliding")


def test_batch_windows_groups_equal_lengths():
    batches = batch_windows([[0, 1], [2, 3], [4], [5, 6]], 2)
    assert batches == [[[0, 1], [2, 3]], [[5, 6]], [[4]]]
    with pytest.raises(ValueError, match="windows_per_batch"):
        batch_windows([[0]], 0)


class ToyModel:
    """A deterministic denoiser whose ε mixes the views inside its window (like temporal attention)."""

    def __init__(self):
        self.calls = []

    def predict_noise(self, x, t, hints, *, num_views, with_references):
        self.calls.append((x.shape[0], num_views, with_references))
        b = x.shape[0] // num_views
        w = x.view(b, num_views, *x.shape[1:])
        mixed = 0.5 * x + 0.5 * w.mean(1, keepdim=True).expand_as(w).reshape(x.shape)
        bias = hints.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1) if hints is not None else 0.0
        return 0.1 * mixed + (0.05 if with_references else -0.05) + 0.01 * bias


@pytest.mark.parametrize("mode", ["independent", "circular"])
def test_window_batching_does_not_change_results(mode):
    n = 12
    windows = view_windows(n, 4, mode, 2)
    hints = torch.randn(n, 3, 16, 16)
    x_t = torch.randn(n, 4, 8, 8)
    schedule = DDIMSchedule.make(ScheduleConfig(), 5, 0.5)
    outs, ref_calls = [], []
    for per_batch in (1, 2, 100):
        steps = []
        out = denoise_views(
            ToyModel(), x_t, hints, schedule, set_references=steps.append,
            generator=torch.Generator().manual_seed(3), guidance=3.0, windows=windows, windows_per_batch=per_batch,
        )
        outs.append(out)
        ref_calls.append(steps)
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.allclose(outs[0], outs[2], atol=1e-6)
    # references are installed exactly once per step, whatever the number of windows
    assert ref_calls[0] == ref_calls[2] == schedule.timesteps.flip(0).tolist()


def test_guidance_one_skips_unconditional_branch():
    model = ToyModel()
    denoise_views(
        model, torch.randn(4, 4, 8, 8), None, DDIMSchedule.make(ScheduleConfig(), 2, 0.0),
        set_references=lambda t: None, generator=torch.Generator(), guidance=1.0,
    )
    assert all(call[2] for call in model.calls)


def test_schedule_validation():
    with pytest.raises(ValueError, match="steps"):
        DDIMSchedule.make(ScheduleConfig(), 0, 0.5)
    with pytest.raises(ValueError, match="eta"):
        DDIMSchedule.make(ScheduleConfig(), 10, 1.5)
    assert math.isclose(float(DDIMSchedule.make(ScheduleConfig(), 10, 0.0).sigmas.abs().max()), 0.0)
