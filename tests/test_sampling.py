"""Schedulers (official DDIM and the fast solvers), view windows, the step-major denoising loop."""

import gc
import weakref

import numpy as np
import pytest
import torch

from diffstyle360_core.config import ScheduleConfig
from diffstyle360_core.options import SCHEDULERS
from diffstyle360_core.sampling import (
    alphas_cumprod,
    batch_windows,
    denoise_views,
    guide_frame_noise,
    make_scheduler,
    view_windows,
)


def _ldm_alphas_cumprod():
    """LDM's make_beta_schedule("linear") in float64 numpy, written independently of diffusers."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def test_official_timesteps_and_schedule():
    ddim = make_scheduler("ddim", ScheduleConfig(), 50)
    assert ddim.timesteps.tolist() == list(range(981, 0, -20))  # 981, 961, ..., 1 (facts §1)
    acp = alphas_cumprod(ScheduleConfig()).double().numpy()
    assert np.allclose(acp, _ldm_alphas_cumprod(), rtol=1e-6, atol=0)
    assert acp[0] == pytest.approx(1 - 0.00085, rel=1e-6)  # first beta of the schedule
    assert acp[-1] ** 0.5 == pytest.approx(0.0683, abs=2e-4)  # facts §3: √ᾱ_T ≈ 0.068
    assert float(ddim.final_alpha_cumprod) == pytest.approx(acp[0], rel=1e-6)  # set_alpha_to_one=False


class _Affine:
    """ε = a·x + b·hint-mean + c (cond) / −c (uncond): cheap, deterministic, view-independent."""

    def __init__(self):
        self.calls = []

    def predict_noise(self, x, t, hints, *, num_views, references):
        self.calls.append((x.shape[0], num_views, references is not None))
        bias = hints.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1) if hints is not None else 0.0
        return 0.3 * x + 0.01 * bias + (0.05 if references is not None else -0.05) + 1e-4 * t


def test_ddim_loop_matches_the_ldm_equation():
    """Our loop with the configured scheduler vs LDM's p_sample_ddim written out in float64."""
    steps, eta, cfg = 10, 0.5, 3.0
    acp = _ldm_alphas_cumprod()
    timesteps = np.arange(0, 1000, 1000 // steps) + 1
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hints = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    got = denoise_views(_Affine(), x0.float(), hints.float(), make_scheduler("ddim", ScheduleConfig(), steps),
                        references_at=lambda t: object(), generators=[torch.Generator().manual_seed(5)],
                        guidance=cfg, eta=eta)
    g = torch.Generator().manual_seed(5)
    x = x0.clone()
    model = _Affine()
    for i in reversed(range(steps)):
        t = int(timesteps[i])
        a, a_prev = acp[t], (acp[timesteps[i - 1]] if i > 0 else acp[0])
        cond = model.predict_noise(x, t, hints, num_views=3, references=object())
        uncond = model.predict_noise(x, t, None, num_views=3, references=None)
        e = uncond + cfg * (cond - uncond)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        pred_x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
        noise = torch.randn(x.shape, generator=g, dtype=torch.float32).double()
        x = np.sqrt(a_prev) * pred_x0 + np.sqrt(1 - a_prev - sigma**2) * e + sigma * noise
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "ddim"])
def test_fast_schedulers_match_a_plain_diffusers_loop(name):
    """The same scheduler run the textbook diffusers way (scale_model_input, init_noise_sigma, step)."""
    steps, cfg = 6, 2.0
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    got = denoise_views(_Affine(), x_t, None, make_scheduler(name, ScheduleConfig(), steps),
                        references_at=lambda t: object(), generators=[torch.Generator()], guidance=cfg)
    ref = make_scheduler(name, ScheduleConfig(), steps)
    x = x_t * ref.init_noise_sigma
    model = _Affine()
    for t in ref.timesteps:
        inp = ref.scale_model_input(x, t)
        cond = model.predict_noise(inp, int(t), None, num_views=2, references=object())
        uncond = model.predict_noise(inp, int(t), None, num_views=2, references=None)
        x = ref.step(uncond + cfg * (cond - uncond), t, x).prev_sample
    assert len(ref.timesteps) == steps
    assert torch.allclose(got, x, atol=1e-5)
    assert not torch.allclose(got, x_t, atol=1e-2)


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

    def predict_noise(self, x, t, hints, *, num_views, references):
        with_references = references is not None
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
    outs, ref_calls = [], []
    for per_batch in (1, 2, 100):
        steps = []
        scheduler = make_scheduler("ddim", ScheduleConfig(), 5)
        out = denoise_views(
            ToyModel(), x_t, hints, scheduler, references_at=lambda t: steps.append(t) or object(),
            generators=[torch.Generator().manual_seed(3)], guidance=3.0, eta=0.5, windows=windows,
            windows_per_batch=per_batch,
        )
        outs.append(out)
        ref_calls.append(steps)
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.allclose(outs[0], outs[2], atol=1e-6)
    # references are built exactly once per step, whatever the number of windows
    assert ref_calls[0] == ref_calls[2] == scheduler.timesteps.tolist()


def test_guidance_one_skips_unconditional_branch():
    model = ToyModel()
    denoise_views(
        model, torch.randn(4, 4, 8, 8), None, make_scheduler("ddim", ScheduleConfig(), 2),
        references_at=lambda t: object(), generators=[torch.Generator()], guidance=1.0,
    )
    assert len(model.calls) == 2 and all(call[2] for call in model.calls)


class SpyScheduler:
    """Wraps a scheduler and keeps weak references to every latent it returns."""

    def __init__(self, inner):
        self.inner, self.refs = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, *args, **kwargs):
        out = self.inner.step(*args, **kwargs)
        self.refs.append(weakref.ref(out.prev_sample))
        return out


def test_step_hook_sees_every_step_and_an_exception_in_it_frees_the_loop():
    seen = []

    def hook(step, total, x, denoised):
        seen.append((step, total, x.device.type))
        assert denoised is not None and denoised.shape == x.shape and denoised.device.type == "cpu"  # DDIM's x_0
        if step == 2:
            raise KeyboardInterrupt

    spy = SpyScheduler(make_scheduler("ddim", ScheduleConfig(), 4))
    with pytest.raises(KeyboardInterrupt) as info:
        denoise_views(ToyModel(), torch.randn(2, 4, 8, 8), None, spy, references_at=lambda t: object(),
                      generators=[torch.Generator()], guidance=2.0, on_step=hook)
    gc.collect()
    assert seen == [(1, 4, "cpu"), (2, 4, "cpu")]
    assert info.value is not None  # the traceback is still alive …
    assert len(spy.refs) == 2 and all(r() is None for r in spy.refs)  # … and keeps no latent of the loop


def test_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("heun", ScheduleConfig(), 10)
