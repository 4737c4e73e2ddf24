"""Pipelines end to end on tiny random models: determinism, controls, windows, input errors."""

import copy

import pytest
import torch

from diffstyle360_core.fusion import alpha_weights
from diffstyle360_core.pipeline import DiffStyle360Pipeline, Style
from tiny_models import tiny_pipeline

FAST = dict(steps=2, cfg=3.0, eta=0.5)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("cams") / "sphere32", views=32, jitter=0.02)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    content = torch.rand(1, 64, 64, 3, generator=g)  # ComfyUI IMAGE layout
    style = torch.rand(1, 64, 64, 3, generator=g)
    style2 = torch.rand(1, 64, 64, 3, generator=g)
    back = torch.rand(1, 64, 64, 3, generator=g)
    return content, style, style2, back


def test_back_view_is_deterministic(pipe, images):
    content = images[0]
    a = pipe.back_view(content, seed=3, **FAST)
    b = pipe.back_view(content, seed=3, **FAST)
    c = pipe.back_view(content, seed=4, **FAST)
    assert a.shape == (1, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)


def test_same_seed_same_views(pipe, images):
    content, style, _, back = images
    kw = dict(content_back=back, views=4, seed=11, **FAST)
    style = Style(images=[style], backs=[back])
    first = pipe.stylize(content, style, **kw)
    again = pipe.stylize(content, style, **kw)
    assert first.views.shape == (4, 3, 64, 64)
    assert first.yaws_deg == [0.0, 90.0, 180.0, 270.0]
    assert torch.equal(first.views, again.views)
    other = pipe.stylize(content, style, **{**kw, "seed": 12})
    assert not torch.equal(first.views, other.views)


def test_a_rounding_change_in_a_back_view_moves_the_views_by_as_little(pipe, images):
    """Another CPU computes a generated back view a few ulps differently: the reference noise is seeded
    from the user's images only, so the turntable moves by about as much instead of drawing new noise."""
    content, style, _, back = images
    kw = dict(views=4, seed=11, **FAST)
    nudged = (back + 1e-6 * torch.randn(back.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    first = pipe.stylize(content, Style(images=[style], backs=[back]), content_back=back, **kw)
    second = pipe.stylize(content, Style(images=[style], backs=[nudged]), content_back=nudged, **kw)
    assert not torch.equal(back, nudged)
    # tolerance: 1e-6 in the inputs, amplified by two DDIM steps of a random tiny model; a new noise draw moves
    # views by ~0.3 (measured), so 1e-3 separates the two cases by two orders of magnitude
    torch.testing.assert_close(second.views, first.views, rtol=0, atol=1e-3)


def test_controls_change_the_result(pipe, images):
    content, style, style2, back = images
    kw = dict(content_back=back, views=2, seed=5, **FAST)
    spec = Style(images=[style], backs=[back])
    base = pipe.stylize(content, spec, tau=1.0, **kw).views
    scaled = pipe.stylize(content, spec, tau=1.5, **kw).views
    plain = pipe.stylize(content, None, **kw).views
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:40, 16:48] = 1.0
    masked = pipe.stylize(content, Style(images=[style], backs=[back], mask=mask), tau=1.0, **kw).views
    aligned = pipe.stylize(content, spec, tau=1.0, pairing="aligned", **kw).views
    for other in (scaled, plain, masked, aligned):
        assert not torch.allclose(base, other, atol=1e-5)


def test_alpha_endpoints_reproduce_single_styles(pipe, images):
    """float64, so batching content and 1 or 2 style images through one pass cannot differ by rounding."""
    pipe = DiffStyle360Pipeline(copy.deepcopy(pipe.main).double(), pipe.back_view_model, pipe.cameras)
    content, style, style2, back = images
    kw = dict(content_back=back, views=2, seed=5, **FAST)
    backs = [back, back]  # fixed style backs so only the blend differs
    single1 = pipe.stylize(content, Style(images=[style], backs=[back]), **kw).views
    single2 = pipe.stylize(content, Style(images=[style2], backs=[back]), **kw).views
    at0 = pipe.stylize(content, Style(images=[style, style2], weights=alpha_weights(0.0), backs=backs), **kw).views
    at1 = pipe.stylize(content, Style(images=[style, style2], weights=alpha_weights(1.0), backs=backs), **kw).views
    mid = pipe.stylize(content, Style(images=[style, style2], weights=alpha_weights(0.5), backs=backs), **kw).views
    assert torch.allclose(at0, single1, atol=1e-9)
    assert torch.allclose(at1, single2, atol=1e-9)
    assert not torch.allclose(mid, single1, atol=1e-4)


def test_two_masked_styles(pipe, images):
    content, style, style2, back = images
    mouth = torch.zeros(1, 64, 64)
    mouth[:, 40:52, 20:44] = 1
    eyes = torch.zeros(1, 64, 64)
    eyes[:, 20:30, 12:52] = 1
    styles = [Style(images=[style], mask=mouth, backs=[back]), Style(images=[style2], mask=eyes, backs=[back])]
    out = pipe.stylize(content, styles, content_back=back, views=2, seed=1, **FAST)
    assert out.views.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="overlap"):
        pipe.stylize(content, [Style(images=[style], mask=mouth), Style(images=[style2], mask=mouth)],
                     content_back=back, views=2, **FAST)
    with pytest.raises(ValueError, match="needs a mask"):
        pipe.stylize(content, [Style(images=[style], mask=mouth), Style(images=[style2])],
                     content_back=back, views=2, **FAST)


def test_window_batching_and_modes(pipe, images):
    content, style, _, back = images
    kw = dict(content_back=back, views=8, window=4, seed=2, **FAST)
    style = Style(images=[style], backs=[back])
    one = pipe.stylize(content, style, windows_per_batch=1, **kw).views
    all_at_once = pipe.stylize(content, style, windows_per_batch=8, **kw).views
    assert torch.allclose(one, all_at_once, atol=1e-5)
    circular = pipe.stylize(content, style, window_mode="circular", overlap=2, **kw).views
    assert not torch.allclose(circular, one, atol=1e-4)
    circ_batched = pipe.stylize(content, style, window_mode="circular", overlap=2, windows_per_batch=1, **kw).views
    assert torch.allclose(circular, circ_batched, atol=1e-5)


def test_generated_backs_are_used_when_missing(pipe, images):
    content, style, _, _ = images
    events = []
    out = pipe.stylize(content, style, views=2, seed=9, progress=events.append, **FAST)
    alone = pipe.back_view(content, seed=9, **FAST)
    # content and style backs come from one batched run; each equals its own run alone
    assert torch.allclose(out.content_back, alone, atol=1e-5)
    assert torch.allclose(out.style_backs[0][0], pipe.back_view(style, seed=9, **FAST), atol=1e-5)
    assert len(out.style_backs) == 1 and out.style_backs[0][0].shape == (1, 3, 64, 64)
    assert [e.phase for e in events].count("back views") == FAST["steps"]  # one run for both backs


def test_guide_frames_change_initial_noise(pipe, images):
    content, style, _, back = images
    guides = torch.rand(2, 64, 64, 3)
    kw = dict(content_back=back, views=2, seed=2, **FAST)
    style = Style(images=[style], backs=[back])
    plain = pipe.stylize(content, style, **kw).views
    guided = pipe.stylize(content, style, guide_frames=guides, **kw).views
    assert not torch.allclose(plain, guided, atol=1e-5)
    with pytest.raises(ValueError, match="guide_frames"):
        pipe.stylize(content, style, guide_frames=guides[:1], **kw)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tau=0.0), "tau must be in"),
        (dict(tau=float("nan")), "tau must be a finite"),
        (dict(views=33), "views"),
        (dict(window=30), "window must be in"),
        (dict(pairing="swap"), "pairing"),
        (dict(steps=0), "steps"),
        (dict(cfg=-1.0), "cfg"),
        (dict(window_mode="sliding"), "window_mode"),
    ],
)
def test_bad_arguments_raise_clear_errors(pipe, images, kwargs, message):
    content, style, _, back = images
    with pytest.raises(ValueError, match=message):
        pipe.stylize(content, style, content_back=back, **{"views": 2, **FAST, **kwargs})


def test_bad_images_raise_clear_errors(pipe, images):
    content, style, _, back = images
    with pytest.raises(ValueError, match="content"):
        pipe.stylize(torch.rand(1, 64, 64, 2), style, content_back=back, views=2, **FAST)
    with pytest.raises(ValueError, match="content"):
        pipe.stylize(torch.rand(2, 64, 64, 3), style, content_back=back, views=2, **FAST)
    with pytest.raises(ValueError, match="mask"):
        pipe.stylize(content, Style(images=[style], mask=torch.zeros(1, 64, 64)), content_back=back, views=2, **FAST)
    with pytest.raises(ValueError, match="blend weights"):
        pipe.stylize(content, Style(images=[style, style]), content_back=back, views=2, **FAST)
    with pytest.raises(ValueError, match="sum"):
        pipe.stylize(content, Style(images=[style, style], weights=[0.5, 0.6]), content_back=back, views=2, **FAST)


def test_mask_with_another_aspect_ratio_than_its_style_image_is_refused(pipe, images):
    content, style, _, back = images
    wide_style = torch.rand(1, 64, 96, 3)
    with pytest.raises(ValueError, match="aspect"):
        pipe.stylize(content, Style(images=[wide_style], mask=torch.ones(1, 64, 64)), content_back=back, views=2,
                     **FAST)


def test_stylize_settings_reach_every_fusion_layer(pipe, images, monkeypatch):
    """τ, pairing, mask mode and the resized mask arrive at all 16 SFA layers on every step."""
    import diffstyle360_core.attention as attention_module

    content, style, _, back = images
    built, attended = [], []
    real_build, real_attend = attention_module.reference_attention_inputs, attention_module.attend_with_references

    def spy_build(k_c, v_c, styles, **kw):
        built.append((k_c is not None, len(styles), [m for _, _, m in styles], kw))
        return real_build(k_c, v_c, styles, **kw)

    def spy_attend(q, k_l, v_l, refs, heads):
        attended.append(refs)
        return real_attend(q, k_l, v_l, refs, heads)

    monkeypatch.setattr(attention_module, "reference_attention_inputs", spy_build)
    monkeypatch.setattr(attention_module, "attend_with_references", spy_attend)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    steps = 2
    pipe.stylize(content, Style(images=[style], backs=[back], mask=mask), content_back=back, views=2, tau=1.3,
                 pairing="aligned", mask_mode="confined", steps=steps, cfg=3.0, eta=0.5, seed=1)
    # the reference slots are built once per layer and step (not per window batch) …
    assert len(built) == 16 * steps
    for has_content, n_styles, masks, kw in built:
        assert has_content and n_styles == 1
        assert kw["tau"] == pytest.approx(1.3) and kw["pairing"] == "aligned" and kw["mask_mode"] == "confined"
        m = masks[0]
        assert m is not None and 0 < float(m.sum()) < m.shape[1]
    # … and read by every layer of the one conditional pass per step (both views in one window);
    # reference-free passes (appearance modules, the unconditional branch) use diffusers' own processor
    assert len(attended) == 16 * steps and all(refs is not None and refs.bias is not None for refs in attended)
    assert pipe.main.fusion.call is None  # nothing of the run stays on the model
    assert all(reader.inputs is None for _, _, reader in pipe.main.fusion.readers)


def test_complementary_masks_work_in_half_precision(pipe, images):
    """Masks stay float32 inside the layers: 0.3 + 0.7 must not round above 1 in fp16."""
    content, style, style2, back = images
    half = DiffStyle360Pipeline(copy.deepcopy(pipe.main).half(), pipe.back_view_model, pipe.cameras)
    a = torch.full((1, 64, 64), 0.3)
    styles = [Style(images=[style], mask=a, backs=[back]), Style(images=[style2], mask=1 - a, backs=[back])]
    out = half.stylize(content, styles, content_back=back, views=2, steps=1, cfg=3.0, eta=0.5)
    assert out.views.dtype == torch.float16 and bool(torch.isfinite(out.views).all())


def test_wrong_size_cameras_are_refused_before_any_back_view(pipe, images):
    from diffstyle360_core.cameras import CameraSet

    content, style, _, _ = images
    big = CameraSet(images=torch.zeros(2, 3, 128, 128), yaws_deg=[0.0, 180.0])
    with pytest.raises(ValueError, match="camera conditions are 128px"):
        pipe.stylize(content, style, cameras=big, **FAST)  # no content_back: would need a back-view run


def test_batched_back_views_equal_one_by_one(pipe, images):
    from diffstyle360_core.options import SamplerOptions

    content, style, style2, _ = images
    opts = SamplerOptions(seed=4, steps=2)
    batched = pipe.back_views([content, style, style2], sampler=opts)
    singles = torch.cat([pipe.back_views([img], sampler=opts) for img in (content, style, style2)])
    assert batched.shape == (3, 3, 64, 64)
    assert torch.allclose(batched, singles, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


def test_progress_reports_phases_and_overall_steps(pipe, images):
    content, style, _, back = images
    events = []
    pipe.stylize(content, style, views=4, seed=1, steps=3, cfg=3.0, eta=0.5, decode_chunk=2,
                 progress=events.append)
    phases = [e.phase for e in events]
    assert phases == ["back views"] * 3 + ["turntable"] * 3 + ["decode"] * 2
    assert [e.overall_step for e in events] == list(range(1, 9))
    assert all(e.overall_total == 8 for e in events)
    assert events[3].latents.shape == (4, 4, 8, 8) and events[-1].latents is None
    # DDIM's x_0 estimate (what a preview shows), not the noisy x_t of the same step
    assert events[3].denoised.shape == (4, 4, 8, 8) and events[-1].denoised is None
    assert not torch.allclose(events[3].denoised, events[3].latents, atol=1e-3)
    events.clear()
    pipe.stylize(content, Style(images=[style], backs=[back]), content_back=back, views=2, steps=2,
                 progress=events.append)
    assert [e.phase for e in events] == ["turntable", "turntable", "decode"]  # no back view to generate


@pytest.mark.parametrize("phase", ["turntable", "decode"])
def test_interrupt_in_progress_leaves_nothing_behind(pipe, images, monkeypatch, phase):
    import gc
    import weakref

    import diffstyle360_core.pipeline as pipeline_module

    content, style, _, back = images
    produced = []
    real = pipeline_module.make_scheduler

    def spying(*args, **kwargs):
        scheduler = real(*args, **kwargs)
        step = scheduler.step

        def recording(*a, **k):
            out = step(*a, **k)
            produced.append(weakref.ref(out.prev_sample))
            return out

        scheduler.step = recording
        return scheduler

    monkeypatch.setattr(pipeline_module, "make_scheduler", spying)
    real_encode = pipeline_module._encode_reference

    def encoding(*args, **kwargs):  # reference latents (content, styles) must go too
        latents = real_encode(*args, **kwargs)
        produced.append(weakref.ref(latents))
        return latents

    monkeypatch.setattr(pipeline_module, "_encode_reference", encoding)

    def interrupt(event):
        assert event.latents is None or event.latents.device.type == "cpu"  # what a host keeps holds no GPU memory
        if event.phase == phase:
            raise KeyboardInterrupt("cancelled by the host")

    with pytest.raises(KeyboardInterrupt) as info:
        pipe.stylize(content, Style(images=[style], backs=[back]), content_back=back, views=2, progress=interrupt,
                     decode_chunk=1, **FAST)
    gc.collect()
    assert str(info.value) == "cancelled by the host"  # propagated unchanged
    assert produced and all(ref() is None for ref in produced)  # no latent kept alive by the traceback
    assert pipe.main.fusion.call is None
    # the pipeline still works after an interrupt
    assert pipe.stylize(content, style, content_back=back, views=2, **FAST).views.shape == (2, 3, 64, 64)


def test_steps_called_separately_equal_stylize(pipe, images):
    from diffstyle360_core.cameras import select_views
    from diffstyle360_core.options import FusionSettings, SamplerOptions, WindowOptions

    content, style, _, back = images
    spec = Style(images=[style], backs=[back])
    whole = pipe.stylize(content, spec, content_back=back, views=4, tau=1.2, window=2, seed=6, **FAST).views
    sampler = SamplerOptions(seed=6, **FAST)
    refs = pipe.prepare_references(content, spec, content_back=back, sampler=sampler)
    latents = pipe.denoise(refs, select_views(pipe.cameras, views=4), fusion=FusionSettings(tau=1.2),
                           sampler=sampler, windows=WindowOptions(window=2))
    assert latents.dtype == torch.float32 and latents.shape == (4, 4, 8, 8)
    assert torch.equal(pipe.decode(latents), whole)  # the same path: stylize() is exactly these three calls


def test_a_call_leaves_the_model_as_it_was(pipe, images):
    content, style, _, back = images
    kw = dict(content_back=back, views=2, seed=3, **FAST)
    spec = Style(images=[style], backs=[back])
    before = pipe.stylize(content, spec, **kw).views
    pipe.stylize(content, spec, tau=1.8, pairing="aligned", mask_mode="confined", **kw)
    assert torch.equal(pipe.stylize(content, spec, **kw).views, before)


def test_per_layer_tau_is_reachable_from_stylize(pipe, images):
    from diffstyle360_core.options import tau_by_resolution

    content, style, _, back = images
    kw = dict(content_back=back, views=2, seed=3, **FAST)
    spec = Style(images=[style], backs=[back])
    flat = pipe.stylize(content, spec, tau=1.05, **kw).views
    same = pipe.stylize(content, spec, tau={"*": 1.05}, **kw).views
    fine = pipe.stylize(content, spec, tau=tau_by_resolution(1.05, {0: 1.6}), **kw).views
    assert torch.equal(flat, same)  # the same kernels on the same values: only the τ lookup differs
    assert not torch.allclose(flat, fine, atol=1e-5)


def test_full_comfyui_seed_range_and_numpy_scalars(pipe, images):
    import numpy as np

    content, style, _, back = images
    spec = Style(images=[style], backs=[back])
    out = pipe.stylize(content, spec, content_back=back, views=np.int64(2), seed=2**64 - 1,
                       steps=np.int64(1), cfg=np.float32(3.0))
    assert out.views.shape == (2, 3, 64, 64)
    for bad in (dict(seed=2**64), dict(seed=-1), dict(steps=True), dict(cfg="3"), dict(tau=None), dict(tau=[1.05]),
                dict(windows_per_batch="4"), dict(cameras="x")):
        with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
            pipe.stylize(content, spec, content_back=back, views=2, **{**FAST, **bad})
