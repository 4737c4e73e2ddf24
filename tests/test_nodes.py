"""The seven ComfyUI nodes on the tiny weights, without ComfyUI (nodes/host.py's fallback).

Outputs, shapes and ranges, one-sentence errors, the interrupt, progress calls,
model lifetime (no cache beyond the host's), and the host wiring (one patcher per set
of weights) through the fallback memory manager.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nodes
from diffstyle360_core import options
from diffstyle360_core.options import FusionSettings
from nodes import host, loader
from nodes.common import DiffStyle360Error
from nodes.styles import StyleStack
from node_runner import run

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "workflows" / "images"
N = nodes.nodes_by_id()
STEPS = 2  # tiny runs: every test stays fast on 2 CPU cores


# --------------------------------------------------------------------------------------------- fixtures
def comfy_image(name: str) -> torch.Tensor:
    a = np.asarray(Image.open(IMAGES / name).convert("RGB"), np.float32) / 255.0
    return torch.from_numpy(a)[None]


def comfy_mask(name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(IMAGES / name).convert("L"), np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def models_dir(tiny_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_models")
    os.symlink(tiny_weights, root / "tiny")
    partial = root / "main_only"  # a weight set without a back-view model
    partial.mkdir()
    os.symlink(Path(tiny_weights) / "main", partial / "main")
    os.symlink(Path(tiny_weights) / "cam_condition", partial / "cam_condition")
    host.set_fallback_models_dir(root)
    yield root


@pytest.fixture
def model(models_dir):
    return run("DiffStyle360LoadAppearanceModules", "tiny", loader.TRAINING_FREE, "auto")[0]


@pytest.fixture
def cams(model):
    return run("DiffStyle360TurntableCamera", model, 2, 0.0, 360.0)[0]


@pytest.fixture
def bars():
    host.RecordingProgressBar.instances.clear()
    yield host.RecordingProgressBar.instances
    host.RecordingProgressBar.instances.clear()


@pytest.fixture(autouse=True)
def _no_interrupt_left():
    host.request_interrupt(False)
    yield
    host.request_interrupt(False)


def sample(model, cams, style=None, **kw):
    args = dict(seed=3, steps=STEPS, cfg=3.0, eta=0.5, scheduler="ddim", window=8, window_mode="independent",
                overlap=4, windows_per_batch=4, crop="center", decode_chunk=4)
    args.update(kw)
    return run("DiffStyle360StyleFusionSampler", model, comfy_image("astronaut.png"), cams, style=style,
                                                        **args)


def assert_image(x, n, size=64):
    assert torch.is_tensor(x) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert tuple(x.shape) == (n, size, size, 3)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and torch.isfinite(x).all()


def assert_one_sentence(err: BaseException, *words):
    text = str(err)
    assert isinstance(err, DiffStyle360Error), type(err)
    assert "\n" not in text and "Traceback" not in text and len(text) < 600, text
    for w in words:
        assert w.lower() in text.lower(), (w, text)


# --------------------------------------------------------------------------------------------- node schemas
def inputs_of(node_id: str, section: str = "required") -> dict:
    """One section of the node's inputs as ``GET /object_info`` sends them: name → (type, options)."""
    return N[node_id].GET_NODE_INFO_V1()["input"].get(section, {})


def test_seven_frozen_node_ids_with_descriptions_and_tooltips():
    assert set(N) == {
        "DiffStyle360LoadAppearanceModules", "DiffStyle360BackViewGenerate", "DiffStyle360TurntableCamera",
        "DiffStyle360KeyScale", "DiffStyle360StyleMask", "DiffStyle360StyleBlend", "DiffStyle360StyleFusionSampler",
    }
    for name, cls in N.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == name and info["display_name"].startswith("DiffStyle360 "), name
        assert info["category"] == cls.CATEGORY == "DiffStyle360", name
        assert len(info["description"]) > 80 and cls.DESCRIPTION == info["description"], name
        assert issubclass(cls, host.io.ComfyNode) and callable(getattr(cls, cls.FUNCTION)), name
        assert len(info["output"]) == len(info["output_name"]) == len(info["output_tooltips"]), name
        assert all(info["output_tooltips"]), name
        for section in ("required", "optional"):
            for inp, entry in info["input"].get(section, {}).items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{name}.{inp} has no tooltip"


def test_widget_ranges_are_the_core_options():
    sampler = inputs_of("DiffStyle360StyleFusionSampler")
    for key, rng in (("seed", options.SEED), ("steps", options.STEPS), ("cfg", options.CFG), ("eta", options.ETA),
                     ("window", options.WINDOW), ("overlap", options.OVERLAP),
                     ("windows_per_batch", options.WINDOWS_PER_BATCH), ("decode_chunk", options.DECODE_CHUNK)):
        opts = sampler[key][1]
        assert (opts["default"], opts["min"], opts["max"]) == (rng.default, rng.low, rng.high), key
        assert sampler[key][0] == ("INT" if rng.integer else "FLOAT"), key
    assert sampler["scheduler"] == ("COMBO", sampler["scheduler"][1])
    assert sampler["scheduler"][1]["options"] == list(options.SCHEDULERS)
    assert sampler["window_mode"][1]["options"] == list(options.WINDOW_MODES)
    assert sampler["crop"][1]["options"] == list(options.CROP_MODES)
    assert sampler["seed"][1]["max"] == 2**64 - 1 and sampler["seed"][1]["control_after_generate"] is True
    ks = inputs_of("DiffStyle360KeyScale")
    assert (ks["tau"][1]["default"], ks["tau"][1]["min"], ks["tau"][1]["max"]) == (1.05, options.TAU.low,
                                                                                   options.TAU.high)
    assert ks["pairing"][1]["options"] == ["from the module"] + list(options.PAIRINGS)
    assert ks["mask_mode"][1]["options"] == ["from the module"] + list(options.MASK_MODES)
    assert inputs_of("DiffStyle360StyleBlend")["alpha"][1]["default"] == options.ALPHA.default
    assert inputs_of("DiffStyle360TurntableCamera")["views"][1]["default"] == options.VIEWS.default
    # the sampler's style input takes a plain IMAGE or a DS360_STYLE
    assert inputs_of("DiffStyle360StyleFusionSampler", "optional")["style"][0] == "IMAGE,DS360_STYLE"


def test_loader_lists_weight_sets_and_style_modules(models_dir):
    spec = inputs_of("DiffStyle360LoadAppearanceModules")
    assert {"tiny", "main_only"} <= set(spec["weight_set"][1]["options"])
    styles = spec["style_module"][1]["options"]
    assert styles[0] == loader.TRAINING_FREE and "tiny/style_module-tiny.safetensors" in styles
    assert spec["dtype"][1]["options"] == ["auto", "fp16", "bf16", "fp32", "fp8_e4m3fn"]
    optional = inputs_of("DiffStyle360LoadAppearanceModules", "optional")
    assert optional["compile"][1]["options"] == ["off", "regional", "full"]
    assert optional["compile"][1]["default"] == "off"


# --------------------------------------------------------------------------------------------- loading and cache
def test_loading_is_lazy_shared_while_held_and_back_view_only_when_needed(models_dir, monkeypatch, bars):
    reads = []
    real = loader.load_model

    def counting(folder, device, dtype):
        reads.append(Path(folder).name)
        return real(folder, device, dtype)

    monkeypatch.setattr(loader, "load_model", counting)
    load = partial(run, "DiffStyle360LoadAppearanceModules")
    handle = load("tiny", loader.TRAINING_FREE, "auto")[0]
    cams = run("DiffStyle360TurntableCamera", handle, 2, 0.0, 360.0)[0]
    assert reads == []  # loader and cameras read no weights

    back = comfy_image("style_posterized.png")
    views, backs = sample(handle, cams, content_back=back, steps=1)  # no style, back given: no back-view model
    assert reads == ["main"]
    assert_image(backs, 1)

    again = load("tiny", loader.TRAINING_FREE, "auto")[0]  # a second loader while the first output lives
    assert again.main_model() is handle.main_model()
    assert reads == ["main"]

    run("DiffStyle360BackViewGenerate", handle, back, 1, 1, 3.0, 0.5, "ddim", "center")
    assert again.back_view_model() is handle.back_view_model()
    assert reads == ["main", "back_view"]

    # a different dtype is another model; a re-converted (touched) folder is read again
    load("tiny", loader.TRAINING_FREE, "bf16")[0].main_model()
    assert reads == ["main", "back_view", "main"]
    config = Path(models_dir, "tiny", "main", "unet.safetensors")
    st = config.stat()
    try:
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        handle.main_model()
        assert reads == ["main", "back_view", "main", "main"]
    finally:
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_models_live_only_as_long_as_the_hosts_outputs(models_dir, monkeypatch):
    """No cache of our own: when ComfyUI drops the loader's output (/free, eviction), the weights are freed, and
    each freed model hands the heap its runs left behind back to the system (one trim per model)."""
    import gc
    import weakref

    from diffstyle360_core import returnable_memory

    trims = []
    monkeypatch.setattr(returnable_memory, "TRIM_DELAY_S", 0.05)
    monkeypatch.setattr(returnable_memory, "release_freed_heap", lambda: trims.append(1))
    gc.collect()  # models earlier tests left to the collector are freed (and trim) now, not during this test
    time.sleep(returnable_memory.TRIM_DELAY_S + 0.5)
    trims.clear()
    handle = run("DiffStyle360LoadAppearanceModules", "tiny", "tiny/style_module-tiny.safetensors", "fp32")[0]
    cams = run("DiffStyle360TurntableCamera", handle, 2, 0.0, 360.0)[0]
    sample(handle, cams, content_back=comfy_image("style_ink.png"), steps=1)
    alive = [weakref.ref(m) for m in (handle.main_model(), handle._base("main")[1].model)]
    assert loader.live_models() >= 2 and host.loaded_models()
    host.unload_all_models()  # what /free's unload_models does to the memory manager
    assert host.loaded_models() == []
    assert trims == []
    del handle  # what /free's free_memory (executor cache reset) does to the node output
    gc.collect()
    assert [r() for r in alive] == [None, None]
    deadline = time.monotonic() + 10
    while not trims and time.monotonic() < deadline:
        time.sleep(0.02)
    assert trims  # the freed models handed their runs' heap back (one trim for models freed together)


def test_trained_style_module_is_a_clone_of_the_base_patcher_plus_its_own(models_dir):
    load = partial(run, "DiffStyle360LoadAppearanceModules")
    free_handle = load("tiny", loader.TRAINING_FREE, "auto")[0]
    trained_handle = load("tiny", "tiny/style_module-tiny.safetensors", "auto")[0]
    free, trained = free_handle._main(), trained_handle._main()
    assert trained.model is not free.model
    assert trained.model.style_appearance is not None and free.model.style_appearance is None  # base unchanged
    assert trained.model.unet is free.model.unet
    # one patcher per set of weights: the styled model's is the base's cloned (same model: counted once) ...
    assert trained.patcher.model is free.patcher.model and trained.patcher.parent is free.patcher
    # ... carrying the style module's own small patcher, which holds only what the base does not have
    (style,) = trained.patcher.get_nested_additional_models()
    assert list(style.model) == ["style_appearance"]
    assert style.model["style_appearance"] is trained.model.style_appearance
    shared = {id(p) for p in free.model.parameters()}
    assert not any(id(p) in shared for p in style.model.parameters())
    # each model owns its attention slot and readers
    assert trained.model.fusion is not free.model.fusion
    assert {id(r) for *_, r in trained.model.fusion.readers}.isdisjoint({id(r) for *_, r in free.model.fusion.readers})


# --------------------------------------------------------------------------------------------- nodes
def test_back_view_generate_batch_and_progress(model, bars):
    fronts = torch.cat([comfy_image("astronaut.png"), comfy_image("style_ink.png")])
    (backs,) = run("DiffStyle360BackViewGenerate", model, fronts, 5, STEPS, 3.0, 0.5, "ddim", "center")
    assert_image(backs, 2)
    assert len(bars) == 1 and [c[0] for c in bars[0].calls] == list(range(1, STEPS + 1))
    assert bars[0].calls[-1][:2] == (STEPS, STEPS)
    kind, preview, size = bars[0].calls[0][2]
    assert kind == "JPEG" and isinstance(preview, Image.Image) and size == 512


def test_turntable_camera_views_yaw_range_and_user_conditions(model):
    node = partial(run, "DiffStyle360TurntableCamera")
    cams, preview, _ = node(model, 4, 0.0, 360.0)
    assert cams.yaws_deg == [0.0, 90.0, 180.0, 270.0]
    assert_image(preview, 4)
    cams, _, _ = node(model, 3, 90.0, 270.0)
    assert len(cams) == 3 and cams.yaws_deg[0] == 90.0 and cams.yaws_deg == sorted(cams.yaws_deg)
    assert all(90.0 <= y <= 270.0 for y in cams.yaws_deg)
    cams, _, _ = node(model, 2, 315.0, 45.0)  # through the front
    assert cams.yaws_deg[0] == 315.0 and len(cams) == 2
    user = torch.rand(3, 80, 80, 3)
    cams, preview, _ = node(model, 32, 0.0, 360.0, conditions=user)
    assert len(cams) == 3 and cams.source == "user"
    assert_image(preview, 3)
    with pytest.raises(DiffStyle360Error) as err:
        node(model, 40, 0.0, 360.0)
    assert_one_sentence(err.value, "views")


def test_sampler_one_style_outputs_and_progress_across_phases(model, cams, bars):
    views, backs = sample(model, cams, style=comfy_image("style_posterized.png"), decode_chunk=1)
    assert_image(views, 2)
    assert_image(backs, 2)  # content back, style back
    assert len(bars) == 1
    calls = bars[0].calls
    total = STEPS + STEPS + math.ceil(2 / 1)  # back views (one batched run) + turntable + decode chunks
    assert [c[0] for c in calls] == list(range(1, total + 1)) and {c[1] for c in calls} == {total}
    previews = [c[2] for c in calls]
    assert all(p is not None and p[0] == "JPEG" for p in previews[:2 * STEPS])
    assert previews[-1] is None  # decode steps carry no latents


def test_sampler_without_style_gives_plain_novel_views(model, cams, bars):
    back = comfy_image("style_ink.png")
    views, backs = sample(model, cams, content_back=back)
    assert_image(views, 2)
    assert_image(backs, 1)
    assert [c[0] for c in bars[0].calls] == list(range(1, STEPS + 1 + 1))  # turntable + one decode chunk


def test_loader_compile_widget_compiles_the_cached_models_and_off_undoes_it(models_dir, cams, monkeypatch, caplog):
    """compile=regional/full compiles what the sampler runs (same views); off restores the eager model."""
    from diffstyle360_core import acceleration

    real = acceleration.compile_model
    # dynamo's eager backend: the same wiring as inductor without minutes of C++ compiling on a CPU
    monkeypatch.setattr(acceleration, "compile_model", lambda model, **kw: real(model, **kw, backend="eager"))
    load = partial(run, "DiffStyle360LoadAppearanceModules")
    back = comfy_image("style_ink.png")
    plain = load("tiny", loader.TRAINING_FREE, "auto")[0]
    eager, _ = sample(plain, cams, content_back=back)
    compiled_model = load("tiny", loader.TRAINING_FREE, "auto", "regional")[0]
    with caplog.at_level("INFO", logger="nodes.loader"):
        views, _ = sample(compiled_model, cams, content_back=back)
        sample(compiled_model, cams, content_back=back)
    said = [r.getMessage() for r in caplog.records if "first run compiles" in r.getMessage()]
    assert len(said) == 1 and "compile=regional" in said[0]  # once, when it was set, not every run
    main = compiled_model.main_model()
    assert acceleration.is_compiled(main.unet.down_blocks[0].resnets[0])
    assert torch.equal(views, eager)
    sample(plain, cams, content_back=back)  # a loader with compile off shares the cached model: eager again
    assert not acceleration.is_compiled(main.unet.down_blocks[0].resnets[0])
    with pytest.raises(DiffStyle360Error, match="compile must be one of"):
        load("tiny", loader.TRAINING_FREE, "auto", "cudagraphs")


def test_loader_fp8_dtype_stores_weights_in_8_bits_and_samples(models_dir, cams):
    """dtype fp8_e4m3fn: Linear/Conv weights in float8 (VAE excepted), computed in the auto dtype; close to fp32."""
    load = partial(run, "DiffStyle360LoadAppearanceModules")
    back = comfy_image("style_ink.png")
    exact, _ = sample(load("tiny", loader.TRAINING_FREE, "auto")[0], cams, content_back=back)
    handle = load("tiny", loader.TRAINING_FREE, "fp8_e4m3fn")[0]
    views, _ = sample(handle, cams, content_back=back)
    main = handle.main_model()
    assert main.unet.conv_in.weight_fp8.dtype == torch.float8_e4m3fn
    assert not hasattr(main.vae.decoder.conv_out, "weight_fp8")
    assert main.unet.conv_in.bias.dtype == torch.float32  # the auto dtype on the CPU
    assert_image(views, 2)
    assert 0 < float((views - exact).abs().max()) < 0.5  # approximate, not another picture


def test_style_mask_chain_and_blend_reach_the_sampler(model, cams):
    sm = partial(run, "DiffStyle360StyleMask")
    (a,) = sm(comfy_image("style_posterized.png"), comfy_mask("mask_hair.png"))
    (ab,) = sm(comfy_image("style_ink.png"), comfy_mask("mask_lower_face.png")[0],  # [H,W] accepted
                      back_mask=comfy_mask("mask_hair.png"), previous=a)
    assert isinstance(ab, StyleStack) and len(ab.styles) == 2 and ab.styles[1].back_mask is not None

    (blend,) = run("DiffStyle360StyleBlend", comfy_image("style_posterized.png"), comfy_image("style_ink.png"),
                                                   0.25)
    assert list(blend.styles[0].weights) == [0.75, 0.25]
    (three,) = run("DiffStyle360StyleBlend", comfy_image("style_posterized.png"), comfy_image("style_ink.png"),
                                                   0.5, style_3=comfy_image("astronaut.png"), weights="0.5, 0.3,0.2")
    assert list(three.styles[0].weights) == [0.5, 0.3, 0.2]
    (masked_blend,) = sm(blend, comfy_mask("mask_hair.png"))
    assert masked_blend.styles[0].weights == blend.styles[0].weights and masked_blend.styles[0].mask is not None
    with pytest.raises(DiffStyle360Error):  # one back image cannot belong to a blend of two
        sm(blend, comfy_mask("mask_hair.png"), style_back=comfy_image("style_ink.png"))
    # a masked blend (hair) and a masked image with its own back (lower face), in one run
    (chain,) = sm(comfy_image("style_ink.png"), comfy_mask("mask_lower_face.png"),
                         style_back=comfy_image("astronaut.png"), previous=masked_blend)
    views, backs = sample(model, cams, style=chain, content_back=comfy_image("astronaut.png"), steps=1)
    assert_image(views, 2)
    assert_image(backs, 4)  # content back as given, the two blended styles' backs, the given style back


def test_key_scale_settings_reach_the_core(model, cams):
    ks = partial(run, "DiffStyle360KeyScale")
    (plain,) = ks(1.1, "aligned", "confined")
    assert (plain.tau, plain.pairing, plain.mask_mode) == (1.1, "aligned", "confined")
    (per_level,) = ks(1.05, "paper", "paper", tau_res64=1.2, tau_res8=0.9)
    table = FusionSettings(per_level.tau).checked()
    assert table.tau_for("down_blocks.0.attentions.0.transformer_blocks.0.attn1") == 1.2
    assert table.tau_for("up_blocks.3.attentions.2.transformer_blocks.0.attn1") == 1.2
    assert table.tau_for("mid_block.attentions.0.transformer_blocks.0.attn1") == 0.9
    assert table.tau_for("down_blocks.1.attentions.0.transformer_blocks.0.attn1") == 1.05
    with pytest.raises(DiffStyle360Error) as err:
        ks(1.05, "paper", "paper", tau_res32=0.2)
    assert_one_sentence(err.value, "tau")
    seen = {}

    def spy(self, content, style=None, **kw):
        seen.update(kw)
        raise KeyboardInterrupt  # stop before any model runs

    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiffStyle360Pipeline, "stylize", spy)
        with pytest.raises(KeyboardInterrupt):
            sample(model, cams, style=comfy_image("style_ink.png"), fusion=per_level)
    assert seen["tau"] == per_level.tau and seen["pairing"] == "paper" and seen["mask_mode"] == "paper"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiffStyle360Pipeline, "stylize", spy)
        with pytest.raises(KeyboardInterrupt):
            sample(model, cams, style=comfy_image("style_ink.png"))
    # no Key Scale node: τ 1.05; pairing and mask mode left to the core (the trained module's, else paper)
    assert (seen["tau"], seen["pairing"], seen["mask_mode"]) == (1.05, None, None)
    (default,) = ks(1.05)  # the widgets' defaults: "from the module"
    assert inputs_of("DiffStyle360KeyScale")["pairing"][1]["default"] == "from the module"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiffStyle360Pipeline, "stylize", spy)
        with pytest.raises(KeyboardInterrupt):
            sample(model, cams, style=comfy_image("style_ink.png"), fusion=default)
    assert (seen["pairing"], seen["mask_mode"]) == (None, None)


def _style_module_with_metadata(models_dir, name: str, training: str) -> str:
    """The tiny style module re-saved with ``training`` as its diffstyle360_training metadata; returns its label."""
    from safetensors.torch import load_file, save_file

    src = Path(models_dir, "tiny", "style_module-tiny.safetensors")
    save_file(load_file(str(src)), str(Path(models_dir, name)),
              metadata={"format": "pt", "diffstyle360_component": "style_appearance", "diffstyle360_training": training})
    return name


def test_key_scale_from_the_module_follows_the_trained_pairing_and_bad_metadata_names_the_file(models_dir, cams):
    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    load = partial(run, "DiffStyle360LoadAppearanceModules")
    label = _style_module_with_metadata(models_dir, "aligned_confined.safetensors",
                                        '{"pairing": "aligned", "mask_mode": "confined"}')
    trained = load("tiny", label, "auto")[0].main_model()

    def resolve(model, pairing, mask_mode):
        settings = DiffStyle360Pipeline._fusion(model, 1.05, pairing, mask_mode)
        return settings.pairing, settings.mask_mode

    assert resolve(trained, None, None) == ("aligned", "confined")  # "from the module"
    assert resolve(trained, "paper", None) == ("paper", "confined")  # an explicit choice overrides
    free = load("tiny", loader.TRAINING_FREE, "auto")[0].main_model()
    assert resolve(free, None, None) == ("paper", "paper")  # training-free: the paper's
    broken = _style_module_with_metadata(models_dir, "broken_meta.safetensors", "{not json")
    with pytest.raises(DiffStyle360Error) as err:
        sample(load("tiny", broken, "auto")[0], cams, style=comfy_image("style_ink.png"),
               content_back=comfy_image("astronaut.png"), steps=1)
    assert_one_sentence(err.value, "broken_meta.safetensors", "diffstyle360_training")


# --------------------------------------------------------------------------------------------- errors
def test_user_errors_are_one_sentence(model, cams, models_dir):
    load = partial(run, "DiffStyle360LoadAppearanceModules")
    with pytest.raises(DiffStyle360Error) as err:
        load("nowhere", loader.TRAINING_FREE, "auto")
    assert_one_sentence(err.value, "no weight set 'nowhere'", str(models_dir))

    two = torch.cat([comfy_image("astronaut.png")] * 2)
    with pytest.raises(DiffStyle360Error) as err:
        run("DiffStyle360StyleFusionSampler", model, two, cams, 1, STEPS, 3.0, 0.5, "ddim", 8,
                                                     "independent", 4, 4)
    assert_one_sentence(err.value, "content", "one image")

    with pytest.raises(DiffStyle360Error) as err:
        sample(model, cams, steps=5000)
    assert_one_sentence(err.value, "steps")

    with pytest.raises(DiffStyle360Error) as err:
        run("DiffStyle360StyleMask", comfy_image("style_ink.png"), torch.ones(2, 64, 64))
    assert_one_sentence(err.value, "batch of 2 masks")

    sm = partial(run, "DiffStyle360StyleMask")
    (a,) = sm(comfy_image("style_posterized.png"), comfy_mask("mask_hair.png"))
    (ab,) = sm(comfy_image("style_ink.png"), comfy_mask("mask_hair.png"), previous=a)
    with pytest.raises(DiffStyle360Error) as err:
        sample(model, cams, style=ab)
    assert_one_sentence(err.value, "overlap")

    with pytest.raises(DiffStyle360Error) as err:  # LoadImage's mask of an image without alpha: all zeros
        sample(model, cams, style=sm(comfy_image("style_ink.png"), torch.zeros(1, 64, 64))[0])
    assert_one_sentence(err.value, "selects nothing")

    with pytest.raises(DiffStyle360Error) as err:
        sample(model, cams, style=sm(comfy_image("style_ink.png"), torch.ones(1, 64, 32))[0])
    assert_one_sentence(err.value, "aspect ratio")

    blend = partial(run, "DiffStyle360StyleBlend")
    img = comfy_image("style_ink.png")
    with pytest.raises(DiffStyle360Error) as err:
        blend(img, img, 0.5, style_3=img)
    assert_one_sentence(err.value, "weights")
    with pytest.raises(DiffStyle360Error) as err:
        blend(img, img, 0.5, weights="0.7, 0.7")
    assert_one_sentence(err.value, "sum to 1")

    main_only = load("main_only", loader.TRAINING_FREE, "auto")[0]
    with pytest.raises(DiffStyle360Error) as err:
        sample(main_only, cams, style=img)
    assert_one_sentence(err.value, "back-view model", "content_back")
    with pytest.raises(DiffStyle360Error) as err:
        run("DiffStyle360BackViewGenerate", main_only, img, 1, STEPS, 3.0, 0.5, "ddim", "center")
    assert_one_sentence(err.value, "back-view model")


def test_broken_weight_file_is_reported_not_crashed(tiny_weights, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_weights, broken, symlinks=True)
    (broken / "main" / "unet.safetensors").write_bytes(b"not a safetensors file")
    monkeypatch.setattr(host, "_fallback_models_dir", tmp_path)
    handle = run("DiffStyle360LoadAppearanceModules", "broken", loader.TRAINING_FREE, "auto")[0]
    cams = run("DiffStyle360TurntableCamera", handle, 2, 0.0, 360.0)[0]
    with pytest.raises(DiffStyle360Error) as err:
        sample(handle, cams, content_back=comfy_image("astronaut.png"))
    assert_one_sentence(err.value, "unet.safetensors")


def test_out_of_memory_passes_through_unchanged(model, cams, monkeypatch):
    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(DiffStyle360Pipeline, "stylize", oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sample(model, cams, style=comfy_image("style_ink.png"))


# --------------------------------------------------------------------------------------------- interrupt
def test_interrupt_mid_run_raises_the_host_exception_and_leaves_models_clean(model, cams, monkeypatch):
    calls = []

    class CancelAfterTwo(host.RecordingProgressBar):
        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            calls.append(value)
            if len(calls) == 2:
                host.request_interrupt()  # the user presses Cancel during step 2

    monkeypatch.setattr(host, "progress_bar", CancelAfterTwo)
    with pytest.raises(host.InterruptProcessingException):
        sample(model, cams, style=comfy_image("style_posterized.png"))
    assert calls == [1, 2]  # stopped at the next step's check
    main = model.main_model()
    assert main.fusion.call is None
    for module in (main.appearance, main.style_module):
        assert module._bank.features == {} and not module._bank.recording
    host.check_interrupt()  # the flag was consumed: the next run is not cancelled


# --------------------------------------------------------------------------------------------- host wiring
def test_fallback_host():
    assert not host.IN_COMFYUI
    assert host.torch_device().type == "cpu" and host.intermediate_device().type == "cpu"
    assert host.resolve_dtype_choice("auto", torch.device("cpu")) == torch.float32
    assert host.resolve_dtype_choice("bf16", torch.device("cpu")) == torch.bfloat16
    host.request_interrupt()
    with pytest.raises(host.InterruptProcessingException):
        host.check_interrupt()
    host.check_interrupt()  # consumed


def test_models_go_through_the_hosts_memory_manager_once_per_set_of_weights(models_dir, cams, monkeypatch):
    """Every run loads its model's patcher through the memory manager (the fallback's here, ComfyUI's
    load_models_gpu inside ComfyUI: tests/test_host_models.py); base and styled model are one entry."""
    requested = []
    real = host.load_models
    monkeypatch.setattr(host, "load_models", lambda patcher: (requested.append(patcher), real(patcher))[1])
    load = partial(run, "DiffStyle360LoadAppearanceModules")
    free = load("tiny", loader.TRAINING_FREE, "auto")[0]
    trained = load("tiny", "tiny/style_module-tiny.safetensors", "auto")[0]
    host.unload_all_models()
    sample(free, cams, style=comfy_image("style_posterized.png"), steps=1)
    sample(trained, cams, style=comfy_image("style_posterized.png"), steps=1)
    base, styled, back = free._main(), trained._main(), free._base("back_view")[1]
    assert {id(p) for p in requested} == {id(base.patcher), id(styled.patcher), id(back.patcher)}
    loaded = host.loaded_models()
    models = [p.model for p in loaded]
    # the main weights once (the styled clone replaced the base entry), the back-view model, the style module
    assert sum(m is base.model for m in models) == 1 and sum(m is back.model for m in models) == 1
    assert len(loaded) == 3
    counted = sum(p.model_size() for p in loaded)
    style_bytes = sum(t.nbytes for t in styled.model.style_appearance.state_dict().values())
    assert counted == base.patcher.model_size() + back.patcher.model_size() + style_bytes
    host.unload_all_models()
    assert host.loaded_models() == []
