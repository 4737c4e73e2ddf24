"""Who owns the models inside a host: one patcher per set of weights, partial loading, host previews,
per-model attention readers, and random weight sets at real sizes (make-tiny --size).

The first half runs everywhere (the fallback memory manager, the core). The
second half runs against ComfyUI's real ``ModelPatcher`` / ``load_models_gpu``
where ComfyUI is importable (its root on PYTHONPATH) and is skipped with the
reason otherwise (CI has no ComfyUI)::

    cd /path/to/ComfyUI && PYTHONPATH=$PWD python -m pytest /path/to/pack/tests/test_host_models.py
"""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
import weakref
from pathlib import Path

import pytest
import torch

COMFY_IMPORTABLE = importlib.util.find_spec("comfy") is not None and importlib.util.find_spec("folder_paths") is not None
if COMFY_IMPORTABLE and "nodes.host" not in sys.modules and not torch.cuda.is_available():
    from comfy.cli_args import args as _comfy_args

    _comfy_args.cpu = True  # what `main.py --cpu` does: comfy.model_management probes the device at import

from diffstyle360_core.config import BACK_VIEW, MAIN, SIZES, small_config  # noqa: E402
from diffstyle360_core.pipeline import DiffStyle360Pipeline  # noqa: E402
from diffstyle360_core.weights import load_model, load_style_module, sharing_copy  # noqa: E402
from nodes import host  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "workflows" / "images" / "astronaut.png"
STYLE = ROOT / "workflows" / "images" / "style_ink.png"


# --------------------------------------------------------------------------------------------- make-tiny sizes
def _stored_dtypes(path: Path) -> set:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def test_make_tiny_small_fp16_is_a_loadable_set_of_that_architecture(tmp_path):
    from diffstyle360_core.tiny import make_tiny

    paths = make_tiny(tmp_path / "small", size="small", dtype="fp16")
    assert not (tmp_path / "small" / "original").exists()  # sizes above tiny are written as converted folders
    for kind in (MAIN, BACK_VIEW):
        config = json.loads((paths[kind] / "config.json").read_text())
        assert config["unet"]["block_out_channels"] == small_config(kind).unet["block_out_channels"]
        assert (config["temporal"] is not None) == (kind == MAIN)
        assert _stored_dtypes(paths[kind] / "unet.safetensors") == {"F16"}
    main = load_model(paths[MAIN], "cpu", "fp32")
    assert main.config.image_size == 128 and main.temporal is not None
    params = list(main.parameters())
    assert all(torch.isfinite(p).all() for p in params) and all(bool(p.std() > 0) for p in params if p.numel() > 1)
    # the view-position tables are the real sinusoids, not random values
    from diffstyle360_core.temporal import SinusoidalPositionalEncoding

    tables = [m.pe for m in main.temporal.modules() if isinstance(m, SinusoidalPositionalEncoding)]
    assert tables and all(float(t[0, 0, 1::2].min()) == 1.0 for t in tables)  # cos(0): real sinusoids, not noise
    styled = load_style_module(main, paths["style_module"])
    assert styled.style_appearance is not None and _stored_dtypes(paths["style_module"]) == {"F16"}
    assert sorted(p.name for p in (tmp_path / "small" / "cam_condition" / "sphere32").iterdir())[0] == "0000000.png"


def test_make_tiny_command_takes_size_and_dtype(tmp_path, capsys):
    from diffstyle360_core.cli.main import main
    from diffstyle360_core.tiny import make_tiny

    assert main(["make-tiny", str(tmp_path / "t"), "--size", "tiny", "--dtype", "fp16"]) == 0
    assert "wrote tiny model set" in capsys.readouterr().out
    assert _stored_dtypes(tmp_path / "t" / MAIN / "unet.safetensors") == {"F16"}
    assert load_model(tmp_path / "t" / MAIN, "cpu", "fp32").config.image_size == 64
    with pytest.raises(ValueError, match="size must be one of"):
        make_tiny(tmp_path / "x", size="huge")
    assert set(SIZES) == {"tiny", "small", "sd15"}


def test_make_tiny_sd15_writes_the_official_shapes_without_materializing_the_model(tmp_path, monkeypatch):
    """sd15 is GBs (checked by hand, bench/RESULTS.md): here only that every component is written with the
    official shapes, one component at a time, without writing the data."""
    from diffstyle360_core import tiny
    from diffstyle360_core.layout import folder_shapes

    written = {}

    def record(tensors, path, component, dtype=None):
        written[(Path(path).parent.name, component)] = {k: tuple(v.shape) for k, v in tensors.items()}
        return Path(path)

    monkeypatch.setattr("diffstyle360_core.weights.write_component_file", record)
    monkeypatch.setattr(tiny, "_random_component", lambda module, gen, dtype: {
        k: torch.empty(v.shape, device="meta") for k, v in module.state_dict().items()})
    for kind in (MAIN, BACK_VIEW):
        config = SIZES["sd15"](kind)
        tiny._write_random_folder(config, tmp_path / kind, 0, torch.float16)
        expected = folder_shapes(config)
        for comp, shapes in expected.items():
            assert written[(kind, comp)] == {k: tuple(s) for k, s in shapes.items()}, comp
        assert (tmp_path / kind / "config.json").is_file()


# --------------------------------------------------------------------------------------------- attention readers
def test_a_sharing_copy_owns_its_slot_and_readers_and_leaves_the_base_exact(tiny_weights):
    main = load_model(Path(tiny_weights) / MAIN, "cpu", "fp32")
    back = load_model(Path(tiny_weights) / BACK_VIEW, "cpu", "fp32")

    def run(model):
        pipe = DiffStyle360Pipeline(model, back, cameras=_cameras(tiny_weights))
        return pipe.stylize(str(CONTENT), str(STYLE), content_back=str(STYLE), views=2, steps=1, seed=1).views

    before = run(main)
    styled = load_style_module(main, Path(tiny_weights) / "style_module-tiny.safetensors")
    assert styled.fusion is not main.fusion
    mine, theirs = ({id(r) for *_, r in m.fusion.readers} for m in (styled, main))
    assert mine.isdisjoint(theirs)
    styled_views = run(styled)
    attn = dict(main.unet.named_modules())[main.attention_layers[0]]
    assert attn.processor is styled.fusion.readers[0][2]  # the styled model's readers served its call
    after = run(main)
    assert attn.processor is main.fusion.readers[0][2]  # and the base's own are back for its call
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)  # same code path, same numbers
    assert float((styled_views - before).abs().max()) > 1e-4  # the style module changed the picture
    plain = sharing_copy(main)
    assert plain.fusion is not main.fusion and plain.unet is main.unet


def _cameras(weights):
    from diffstyle360_core import loading

    return loading.load_cameras(weights, 64)


# --------------------------------------------------------------------------------------------- fallback manager
def test_fallback_patcher_one_entry_per_set_of_weights_and_no_strong_references():
    base_model = torch.nn.Linear(4, 4)
    extra = torch.nn.ModuleDict({"style_appearance": torch.nn.Linear(4, 2)})
    cpu = torch.device("cpu")
    base = host.FallbackPatcher(base_model, cpu, cpu)
    variant = base.clone()
    variant.set_additional_models(host.STYLE_PATCHER_KEY, [host.FallbackPatcher(extra, cpu, cpu)])
    assert variant.model is base.model and variant.is_clone(base) and variant.parent is base
    assert variant.model_size() == base.model_size() == 4 * 4 * 4 + 4 * 4
    memory = host._FallbackMemory()
    memory.load([base])
    memory.load([variant] + variant.get_nested_additional_models())
    loaded = memory.loaded()
    assert [p.model for p in loaded].count(base_model) == 1 and len(loaded) == 2  # the clone replaced the base
    assert sum(p.model_size() for p in loaded) == base.model_size() + 2 * 4 * 4 + 2 * 4
    grandchild = variant.clone()  # clones carry (clones of) the additional patchers
    assert [p.model for p in grandchild.get_nested_additional_models()] == [extra]
    alive = weakref.ref(variant)
    del variant, grandchild, loaded
    gc.collect()
    assert alive() is None and memory.loaded() == []  # the manager never keeps a patcher alive
    memory.load([base])
    memory.unload_all()
    assert memory.loaded() == []


# --------------------------------------------------------------------------------------------- real ComfyUI
@pytest.fixture(scope="module")
def comfy_mm():
    if not COMFY_IMPORTABLE:
        pytest.skip("ComfyUI is not importable here (CI has none); run with PYTHONPATH=<ComfyUI root>")
    if not host.IN_COMFYUI:
        pytest.skip("nodes.host was imported before ComfyUI in this session; run this file on its own")
    import comfy.model_management as mm

    yield mm
    mm.unload_all_models()


def _tiny_main(tiny_weights):
    return load_model(Path(tiny_weights) / MAIN, "cpu", "fp32")


def test_comfy_one_model_patcher_per_set_of_weights(comfy_mm, tiny_weights):
    import comfy.model_patcher
    import comfy.ops

    mm = comfy_mm
    main = _tiny_main(tiny_weights)
    base = host.new_patcher(main)
    assert isinstance(base, comfy.model_patcher.ModelPatcher) and base.model is main
    layers = [m for m in main.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert layers and all(isinstance(m, comfy.ops.CastWeightBiasOp) for m in layers)  # castable: partial loads
    styled = load_style_module(main, Path(tiny_weights) / "style_module-tiny.safetensors")
    parts = torch.nn.ModuleDict({"style_appearance": styled.style_appearance})
    variant = host.variant_patcher(base, parts)
    assert variant.is_clone(base) and variant.model is main
    assert variant.clone_has_same_weights(variant.clone())
    mm.unload_all_models()
    host.load_models(base)
    host.load_models(variant)
    loaded = mm.loaded_models()
    assert [p.model for p in loaded].count(main) == 1 and len(loaded) == 2  # main weights once + the style module
    style_bytes = mm.module_size(parts)
    assert sum(p.model_size() for p in loaded) == mm.module_size(main) + style_bytes  # counted once
    host.load_models(base)  # back to training-free: still one entry, nothing reloaded twice
    assert [p.model for p in mm.loaded_models()].count(main) == 1
    mm.unload_all_models()
    assert mm.loaded_models() == []


def test_comfy_partial_load_casts_per_layer_and_gives_the_same_noise_prediction(comfy_mm, tiny_weights):
    """What --lowvram/--novram do to our model: ModelPatcher.partially_load leaves layers offloaded with
    comfy_cast_weights set, and they run by casting per call: same ε as the fully loaded model."""
    main = _tiny_main(tiny_weights)
    patcher = host.new_patcher(main)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hints = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    content = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    def eps():
        from diffstyle360_core.attention import FusionCall

        with torch.no_grad():
            bank, _ = main.reference_banks(content, [], 500)
            return main.predict_noise(x, 500, hints, num_views=2, references=FusionCall(bank))

    full = eps()
    cpu = torch.device("cpu")
    patcher.partially_load(cpu, extra_memory=patcher.model_size() // 3)
    cast = [m for m in main.modules() if getattr(m, "comfy_cast_weights", False)]
    assert cast, "nothing was left for per-layer casting"
    torch.testing.assert_close(eps(), full, atol=1e-5, rtol=1e-5)
    patcher.detach()
    assert not any(getattr(m, "comfy_cast_weights", False) for m in main.modules())


class _SameDevice(torch.overrides.TorchFunctionMode):
    """Fails any torch call that mixes tensors of two devices (moves and copies excepted)."""

    MOVES = {torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cpu, torch.Tensor.cuda}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.utils import _pytree as pytree

        kwargs = kwargs or {}
        if func not in self.MOVES:
            devices = {t.device for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.ndim}
            assert len(devices) <= 1, f"{getattr(func, '__name__', func)} mixes {devices}"
        return func(*args, **kwargs)


def test_comfy_partial_load_onto_another_device_never_mixes_devices(comfy_mm, tiny_weights):
    """A partially loaded model computes on the load device with the rest of its layers and buffers still on
    the CPU (--lowvram on a GPU). The meta device stands in for the GPU: every module call must see one device."""
    main = _tiny_main(tiny_weights)
    patcher = host.new_patcher(main)
    meta = torch.device("meta")
    patcher.partially_load(meta, extra_memory=patcher.model_size() // 3)
    assert any(p.device.type == "cpu" for p in main.parameters()) and any(p.is_meta for p in main.parameters())
    main.compute_device = meta  # what HostPlacement.activate records after load_models_gpu
    from diffstyle360_core.attention import FusionCall

    x, content = torch.randn(2, 4, 8, 8, device=meta), torch.randn(2, 4, 8, 8, device=meta)
    hints = torch.randn(2, 3, 64, 64, device=meta)
    with torch.no_grad(), _SameDevice():
        bank, _ = main.reference_banks(content, [], 500)
        eps = main.predict_noise(x, 500, hints, num_views=2, references=FusionCall(bank))
        image = main.decode(eps[:1])
        latent = main.encode(torch.randn(1, 3, 64, 64, device=meta))
    assert eps.is_meta and image.is_meta and latent.is_meta


def test_comfy_previews_use_the_hosts_latent_preview(comfy_mm):
    from comfy.cli_args import LatentPreviewMethod, args
    from PIL import Image

    saved = args.preview_method
    try:
        args.preview_method = LatentPreviewMethod.Latent2RGB
        preview = host.latent_previewer()
        kind, image, size = preview(torch.randn(3, 4, 8, 8))
        assert kind == "JPEG" and isinstance(image, Image.Image) and image.size == (8, 8) and size > 0
        args.preview_method = LatentPreviewMethod.NoPreviews
        assert host.latent_previewer() is None
    finally:
        args.preview_method = saved
